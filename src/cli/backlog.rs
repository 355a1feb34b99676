//! `spillway backlog list | replay`: the operator's side of the backlog
//! store. Output and exit codes only; the work is in `spillway::backlog`.

use indicatif::{ProgressBar, ProgressStyle};
use spillway::backlog::{replay_all, AdminClient, BacklogStore, ReplayError, ReplayReport};
use spillway_flowctl::{GradualDrain, SlowStart};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// `spillway backlog list`: counts, ages and bytes per trigger.
pub fn list(data_dir: &Path) -> ExitCode {
    let store = BacklogStore::read_only(data_dir);
    let scan = match store.scan() {
        Ok(scan) => scan,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    let now = SystemTime::now();
    let age = |at: SystemTime| {
        let secs = now.duration_since(at).unwrap_or(Duration::ZERO).as_secs();
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    };
    let total_bytes: u64 = scan.records.iter().map(|(e, _)| e.bytes).sum();
    println!(
        "backlog in {}: {} event(s), {} bytes",
        store.dir().display(),
        scan.records.len(),
        total_bytes
    );
    if let (Some((_, oldest)), Some((_, newest))) = (scan.records.first(), scan.records.last()) {
        println!(
            "oldest stored {} ago, newest {} ago",
            age(oldest.stored_at),
            age(newest.stored_at)
        );
    }
    // sensor/trigger → (events, bytes, oldest, newest); records are oldest first.
    let mut per_target: BTreeMap<String, (u64, u64, SystemTime, SystemTime)> = BTreeMap::new();
    for (entry, record) in &scan.records {
        let row = per_target
            .entry(spillway::backlog::target(&record.sensor, &record.trigger))
            .or_insert((0, 0, record.stored_at, record.stored_at));
        row.0 += 1;
        row.1 += entry.bytes;
        row.3 = record.stored_at;
    }
    if !per_target.is_empty() {
        println!(
            "{:<40} {:>8} {:>12} {:>14} {:>14}",
            "replayed to (sensor/trigger)", "events", "bytes", "oldest age", "newest age"
        );
        for (target, (events, bytes, oldest, newest)) in &per_target {
            println!(
                "{target:<40} {events:>8} {bytes:>12} {:>14} {:>14}",
                age(*oldest),
                age(*newest)
            );
        }
    }
    if !scan.corrupt.is_empty() {
        println!(
            "{} damaged record(s), left in place (not replayed):",
            scan.corrupt.len()
        );
        for (entry, why) in &scan.corrupt {
            println!("  {}: {why}", entry.name);
        }
    }
    ExitCode::SUCCESS
}

/// `spillway backlog replay`: through the running pipeline's admin API.
pub fn replay(admin: &str, rate: f64, max_rate: f64) -> ExitCode {
    let ramp = SlowStart {
        initial_rate: rate,
        max_rate,
        ..SlowStart::default()
    };
    if let Err(err) = ramp.validate() {
        let err = err
            .to_string()
            .replace("initialRate", "--rate")
            .replace("maxRate", "--max-rate");
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    let client = match AdminClient::new(admin) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("error: cannot build the HTTP client: {err}");
            return ExitCode::from(1);
        }
    };
    let Some(runtime) = crate::runtime() else {
        return ExitCode::from(1);
    };
    let result = runtime.block_on(async {
        let drain = match GradualDrain::new(ramp) {
            Ok(drain) => drain,
            Err(err) => return Err(err.to_string()),
        };
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_signal.cancel();
            }
        });
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} replayed, {per_sec}, eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut progress = |report: &ReplayReport| {
            bar.set_length(report.total as u64);
            bar.set_position(report.done() as u64);
            if report.bus_full > 0 {
                bar.set_message(format!("(bus full {}×: ramp restarted)", report.bus_full));
            }
        };
        let outcome = replay_all(&client, &drain, &mut progress, &stop).await;
        bar.finish_and_clear();
        Ok(outcome)
    });
    match result {
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Ok(Ok(report)) => {
            println!(
                "replayed {} of {} stored event(s){}",
                report.replayed,
                report.total,
                if report.gone > 0 {
                    format!("; {} were already gone", report.gone)
                } else {
                    String::new()
                }
            );
            if report.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                println!(
                    "{} left in the store (not replayable):",
                    report.skipped.len()
                );
                for why in &report.skipped {
                    println!("  {why}");
                }
                ExitCode::from(1)
            }
        }
        Ok(Err(err)) => {
            eprintln!("error: {err}");
            let (ReplayError::Unavailable { report, .. } | ReplayError::Interrupted { report }) =
                &err;
            eprintln!(
                "{} event(s) were replayed and removed; the rest are still stored",
                report.replayed
            );
            ExitCode::from(1)
        }
    }
}
