//! `spillway status`: one terminal screen from a [`Status`] document (like
//! `nats stream report`): bus depth and bytes against their limits, rates,
//! per-trigger lag and windows, process memory, and alerts.
//!
//! Rates need two documents: with a previous one taken `elapsed` earlier
//! they are per-second differences; without one they are shown as `-`.
//! Pure formatting: no I/O, no clock.

use super::status::{Status, TriggerStatus};
use std::fmt::Write as _;
use std::time::Duration;

/// The screen for `now`, with rates against `previous` if given.
pub fn render(admin: &str, now: &Status, previous: Option<(&Status, Duration)>) -> String {
    let mut out = String::new();
    let state = if now.draining {
        "draining"
    } else if now.ready {
        "ready"
    } else {
        "starting"
    };
    let _ = writeln!(out, "spillway at {admin} — {state}");
    let bus = &now.bus;
    let limits = &bus.limits;
    let per_sec = |f: fn(&Status) -> u64| -> String {
        match previous {
            Some((before, elapsed)) if !elapsed.is_zero() => {
                let delta = f(now).saturating_sub(f(before)) as f64;
                format!("{:.1}/s", delta / elapsed.as_secs_f64())
            }
            _ => "-".to_string(),
        }
    };
    let _ = writeln!(
        out,
        "\nBUS {} ({}), discard {}",
        bus.stream, bus.backend, limits.discard
    );
    let _ = writeln!(
        out,
        "  depth     {:>14} / {:<14} {}",
        bus.messages,
        limit(limits.max_msgs, |v| v.to_string()),
        share(bus.messages, limits.max_msgs)
    );
    let _ = writeln!(
        out,
        "  bytes     {:>14} / {:<14} {}",
        bytes(bus.bytes),
        limit(limits.max_bytes, bytes),
        share(bus.bytes, limits.max_bytes)
    );
    let _ = writeln!(
        out,
        "  published {:>14}   {:<14} rejected full {} ({}), too large {}, discarded {}",
        bus.published,
        per_sec(|s| s.bus.published),
        bus.rejected_full,
        per_sec(|s| s.bus.rejected_full),
        bus.rejected_too_large,
        bus.discarded
    );
    if let Some(rss) = now.process.resident_memory_bytes {
        let _ = writeln!(
            out,
            "PROCESS rss {} (bus bytes are {} of it)",
            bytes(rss),
            share(bus.bytes, Some(rss)).trim_matches(|c| c == '(' || c == ')')
        );
    }
    let _ = writeln!(
        out,
        "\n{:<32} {:>10} {:>9} {:>9} {:>13} {:>10} {:>10} {:>8} {:>6}",
        "TRIGGER", "LAG", "ACK PEND", "OLDEST", "WINDOW", "RATE", "OK", "FAILED", "DLQ"
    );
    for t in &now.triggers {
        let before = previous.and_then(|(b, elapsed)| {
            b.triggers
                .iter()
                .find(|p| p.sensor == t.sensor && p.trigger == t.trigger)
                .map(|p| (p, elapsed))
        });
        let rate = match before {
            Some((b, elapsed)) if !elapsed.is_zero() => format!(
                "{:.1}/s",
                completed(t).saturating_sub(completed(b)) as f64 / elapsed.as_secs_f64()
            ),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>9} {:>9} {:>13} {:>10} {:>10} {:>8} {:>6}",
            format!("{}/{}", t.sensor, t.trigger),
            t.lag,
            t.ack_pending,
            t.oldest_unacked_age_seconds
                .map_or("-".to_string(), |s| format!("{s:.1}s")),
            format!("{}/{}/{}", t.inflight, t.concurrency_limit, t.max_in_flight),
            rate,
            count(t, "success"),
            count(t, "failure"),
            count(t, "dlq"),
        );
    }
    let firing = now.alerts.iter().filter(|a| a.state == "firing").count();
    let _ = writeln!(
        out,
        "\nALERTS {} firing, {} pending",
        firing,
        now.alerts.len() - firing
    );
    for a in &now.alerts {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "  {:<8} {:<9} {} {{{}}} since {}: {}",
            a.state.to_uppercase(),
            a.severity,
            a.alertname,
            labels.join(","),
            a.active_since,
            a.summary
        );
    }
    out
}

/// Invocations that ended (success, failure or DLQ), for the rate.
fn completed(t: &TriggerStatus) -> u64 {
    count(t, "success") + count(t, "failure") + count(t, "dlq")
}

fn count(t: &TriggerStatus, outcome: &str) -> u64 {
    t.invocations.get(outcome).copied().unwrap_or(0)
}

fn limit(value: Option<u64>, show: impl Fn(u64) -> String) -> String {
    value.map_or_else(|| "unlimited".to_string(), show)
}

/// `(12.5%)` of `max`, empty without one.
fn share(value: u64, max: Option<u64>) -> String {
    match max {
        Some(max) if max > 0 => format!("({:.1}%)", value as f64 * 100.0 / max as f64),
        _ => String::new(),
    }
}

/// Bytes in binary units.
fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = value as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::super::status::{BusStatus, LimitsStatus, ProcessStatus};
    use super::*;
    use crate::telemetry::alerts::AlertStatus;
    use std::collections::BTreeMap;

    fn status(published: u64, success: u64) -> Status {
        Status {
            uptime_seconds: 10.0,
            ready: true,
            draining: false,
            bus: BusStatus {
                stream: "default".into(),
                backend: "embedded".into(),
                messages: 950,
                bytes: 2048,
                published,
                rejected_full: 0,
                rejected_too_large: 0,
                discarded: 0,
                last_seq: published,
                consumers: 1,
                limits: LimitsStatus {
                    max_msgs: Some(1000),
                    max_bytes: None,
                    max_msg_size: Some(1 << 20),
                    max_consumers: Some(100),
                    max_age_seconds: None,
                    discard: "new".into(),
                },
            },
            triggers: vec![TriggerStatus {
                sensor: "orders".into(),
                trigger: "forward".into(),
                consumer: "orders-forward".into(),
                lag: 900,
                ack_pending: 16,
                redelivered: 0,
                oldest_unacked_age_seconds: Some(3.25),
                inflight: 16,
                concurrency_limit: 16,
                max_in_flight: 16,
                workers: None,
                invocations: BTreeMap::from([("success".to_string(), success)]),
                workflow_template: None,
                pending: 0,
                max_pending: None,
            }],
            alerts: vec![AlertStatus {
                alertname: "QueueDepthExceeded".into(),
                severity: "critical".into(),
                state: "firing".into(),
                labels: BTreeMap::from([("stream".to_string(), "default".to_string())]),
                summary: "bus default holds 950 messages".into(),
                value: 950.0,
                active_since: "2024-01-01T00:00:00Z".into(),
            }],
            process: ProcessStatus {
                resident_memory_bytes: Some(64 << 20),
            },
            workflows: Vec::new(),
            semaphores: Vec::new(),
            backlog: Default::default(),
            sources: Vec::new(),
        }
    }

    #[test]
    fn one_screen_with_depth_lag_rates_limits_and_alerts() {
        let before = status(100, 40);
        let now = status(300, 140);
        let screen = render(
            "http://127.0.0.1:9470",
            &now,
            Some((&before, Duration::from_secs(2))),
        );
        assert!(
            screen.contains("depth                950 / 1000           (95.0%)"),
            "{screen}"
        );
        assert!(screen.contains("2.0 KiB / unlimited"), "{screen}");
        assert!(screen.contains("100.0/s"), "{screen}");
        assert!(screen.contains("orders/forward"), "{screen}");
        assert!(screen.contains("50.0/s"), "{screen}");
        assert!(screen.contains("16/16/16"), "{screen}");
        assert!(screen.contains("PROCESS rss 64.0 MiB"), "{screen}");
        assert!(screen.contains("ALERTS 1 firing, 0 pending"), "{screen}");
        assert!(
            screen.contains("FIRING   critical  QueueDepthExceeded {stream=default}"),
            "{screen}"
        );
        // Without a previous document there are no rates.
        assert!(!render("x", &now, None).contains("/s"));
    }
}
