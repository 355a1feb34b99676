//! The report of a storm, written to a directory: `report.md` (summary,
//! totals, latency, pipeline state, a table per second), `report.json`
//! (the same numbers for scripts and tests), and one SVG chart per metric
//! over time: `rate.svg`, `latency.svg`, and from the admin API
//! `queue_depth.svg`, `lag.svg` and `rss.svg` (each only when there is
//! something to draw).
//!
//! Guarantees: files are written whole or the error names the file; nothing
//! is fetched from elsewhere to view them. Not guaranteed: that an existing
//! report in the directory survives (its files are overwritten; other files
//! are left alone).

use super::recorder::{Bucket, Latency};
use super::sampler::Samples;
use super::svg::{self, Chart, Series};
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Reads one count out of a bucket.
type Field<'a> = &'a dyn Fn(&Bucket) -> u64;

/// Most triggers drawn in `lag.svg` (the total is always drawn).
const MAX_LAG_SERIES: usize = 7;

/// How the storm was run.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub url: String,
    pub admin: Option<String>,
    /// `open` or `closed`.
    pub mode: String,
    /// The rate profile (open loop).
    pub profile: Option<String>,
    /// Most outstanding requests (open loop).
    pub max_outstanding: Option<usize>,
    /// Workers (closed loop).
    pub workers: Option<usize>,
    pub duration_seconds: f64,
    pub payload_bytes: usize,
    /// `PRIORITY:WEIGHT,…` and the header carrying it.
    pub priorities: Option<String>,
    pub priority_header: Option<String>,
    pub honor_retry_after: bool,
    pub timeout_seconds: f64,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Event ids used: `storm-0` up to `storm-<ids_used - 1>` (an arrival
    /// dropped by the generator leaves its id unused).
    pub ids_used: u64,
}

/// Everything a report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: RunInfo,
    pub totals: Bucket,
    pub seconds: Vec<Bucket>,
    /// What the admin API said during the run (`None` without `--admin`).
    pub admin: Option<Samples>,
}

/// A report that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Report {
    /// Writes the report's files into `dir` (created if missing) and
    /// returns their paths, `report.md` first.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let charts = self.charts();
        let mut files = vec![("report.md".to_string(), self.markdown(&charts))];
        files.push((
            "report.json".to_string(),
            serde_json::to_string_pretty(self)? + "\n",
        ));
        for (name, chart) in &charts {
            files.push((name.clone(), svg::render(chart)));
        }
        let mut written = Vec::with_capacity(files.len());
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| ReportError::Io {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }

    /// The charts to draw, by file name.
    fn charts(&self) -> Vec<(String, Chart)> {
        let per_second = |value: &dyn Fn(&Bucket) -> u64| -> Vec<(f64, f64)> {
            self.seconds
                .iter()
                .enumerate()
                .map(|(i, b)| (i as f64, value(b) as f64))
                .collect()
        };
        let t = &self.totals;
        let candidates: [(&str, u64, Field); 10] = [
            ("sent", 1, &|b| b.sent),
            ("accepted", 1, &|b| b.accepted),
            ("429 bus_full", t.rejected_bus_full, &|b| {
                b.rejected_bus_full
            }),
            ("429 rate_limited", t.rejected_rate_limited, &|b| {
                b.rejected_rate_limited
            }),
            ("429 shed", t.rejected_shed, &|b| b.rejected_shed),
            ("429 other", t.rejected_other, &|b| b.rejected_other),
            ("5xx", t.server_errors, &|b| b.server_errors),
            ("other 4xx", t.client_errors, &|b| b.client_errors),
            ("errors", t.errors, &|b| b.errors),
            ("retries", t.retries, &|b| b.retries),
        ];
        let mut rate: Vec<Series> = candidates
            .iter()
            .filter(|(_, total, _)| *total > 0)
            .map(|(name, _, value)| Series::new(*name, per_second(*value)))
            .collect();
        if t.dropped_by_generator > 0 {
            rate.push(Series::new(
                "dropped by generator",
                per_second(&|b| b.dropped_by_generator),
            ));
        }
        let mut charts = vec![(
            "rate.svg".to_string(),
            Chart {
                title: "Requests per second".into(),
                x_label: "seconds since start".into(),
                y_label: "per second".into(),
                series: rate,
            },
        )];
        let latency = |name: &str, value: fn(&Latency) -> u64| {
            let points = self
                .seconds
                .iter()
                .enumerate()
                .filter(|(_, b)| b.latency.count > 0)
                .map(|(i, b)| (i as f64, value(&b.latency) as f64 / 1000.0))
                .collect();
            Series::new(name, points)
        };
        charts.push((
            "latency.svg".to_string(),
            Chart {
                title: "Latency of answers (HDR histogram per second)".into(),
                x_label: "seconds since start".into(),
                y_label: "milliseconds".into(),
                series: vec![
                    latency("p50", |l| l.p50_us),
                    latency("p90", |l| l.p90_us),
                    latency("p99", |l| l.p99_us),
                    latency("max", |l| l.max_us),
                ],
            },
        ));
        let Some(admin) = self.admin.as_ref().filter(|a| !a.samples.is_empty()) else {
            return charts;
        };
        let samples = &admin.samples;
        let over_time =
            |value: &dyn Fn(&super::sampler::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
                samples
                    .iter()
                    .filter_map(|s| Some((s.at_seconds, value(s)?)))
                    .collect()
            };
        let mut depth = vec![Series::new(
            "events on the bus",
            over_time(&|s| s.bus_messages.map(|v| v as f64)),
        )];
        let limit = over_time(&|s| s.bus_max_messages.map(|v| v as f64));
        if !limit.is_empty() {
            depth.push(Series {
                dashed: true,
                ..Series::new("max_msgs", limit)
            });
        }
        charts.push((
            "queue_depth.svg".to_string(),
            Chart {
                title: "Bus depth".into(),
                x_label: "seconds since start".into(),
                y_label: "events".into(),
                series: depth,
            },
        ));
        let mut lag = vec![Series::new(
            "total",
            over_time(&|s| s.total_lag().map(|v| v as f64)),
        )];
        let mut names: Vec<&str> = Vec::new();
        for sample in samples {
            for trigger in &sample.triggers {
                if !names.contains(&trigger.name.as_str()) && names.len() < MAX_LAG_SERIES {
                    names.push(&trigger.name);
                }
            }
        }
        // One trigger's lag is the total; draw it once.
        if names.len() > 1 {
            for name in names {
                lag.push(Series::new(
                    name,
                    over_time(&|s| {
                        let t = s.triggers.iter().find(|t| t.name == name)?;
                        t.lag.map(|v| v as f64)
                    }),
                ));
            }
        }
        charts.push((
            "lag.svg".to_string(),
            Chart {
                title: "Consumer lag".into(),
                x_label: "seconds since start".into(),
                y_label: "events".into(),
                series: lag,
            },
        ));
        let rss = over_time(&|s| s.rss_bytes.map(|v| v as f64 / (1024.0 * 1024.0)));
        if !rss.is_empty() {
            charts.push((
                "rss.svg".to_string(),
                Chart {
                    title: "Resident memory of spillway".into(),
                    x_label: "seconds since start".into(),
                    y_label: "MiB".into(),
                    series: vec![Series::new("RSS", rss)],
                },
            ));
        }
        charts
    }

    fn markdown(&self, charts: &[(String, Chart)]) -> String {
        let r = &self.run;
        let t = &self.totals;
        let mut md = String::new();
        // `write!` to a String cannot fail.
        let _ = writeln!(md, "# Storm report\n");
        let _ = writeln!(md, "- target: `{}`", r.url);
        match (&r.profile, r.max_outstanding, r.workers) {
            (Some(profile), Some(max), _) => {
                let _ = writeln!(
                    md,
                    "- mode: open loop, {profile} (at most {max} requests outstanding)"
                );
            }
            (_, _, Some(workers)) => {
                let _ = writeln!(md, "- mode: closed loop, {workers} workers");
            }
            _ => {
                let _ = writeln!(md, "- mode: {}", r.mode);
            }
        }
        let _ = writeln!(
            md,
            "- duration: {} s, started {}; request timeout {} s",
            r.duration_seconds, r.started_at, r.timeout_seconds
        );
        let priorities = match (&r.priorities, &r.priority_header) {
            (Some(mix), Some(header)) => format!("priorities {mix} in `{header}`"),
            _ => "no priority header".to_string(),
        };
        let _ = writeln!(md, "- payload: {} bytes, {priorities}", r.payload_bytes);
        let _ = writeln!(
            md,
            "- `Retry-After`: {}",
            if r.honor_retry_after {
                "honoured (the same event is sent again once it has passed, if inside the run)"
            } else {
                "ignored"
            }
        );
        let _ = writeln!(
            md,
            "- event ids: `storm-0` … `storm-{}`\n",
            r.ids_used.saturating_sub(1)
        );

        let _ = writeln!(md, "## Totals\n");
        let _ = writeln!(md, "| outcome | count |\n|---|---:|");
        let rows = [
            ("first attempts sent", t.sent),
            ("retries sent (extra load)", t.retries),
            (
                "dropped by the generator (too many outstanding)",
                t.dropped_by_generator,
            ),
            ("accepted (2xx)", t.accepted),
            ("429 bus_full", t.rejected_bus_full),
            ("429 rate_limited", t.rejected_rate_limited),
            ("429 shed", t.rejected_shed),
            ("429 other", t.rejected_other),
            ("5xx", t.server_errors),
            ("other 4xx", t.client_errors),
            ("no answer (connect error, timeout)", t.errors),
        ];
        for (name, count) in rows {
            let _ = writeln!(md, "| {name} | {count} |");
        }
        let l = &t.latency;
        let _ = writeln!(md, "\n## Latency of answered attempts\n");
        let _ = writeln!(
            md,
            "| answers | p50 | p90 | p99 | p99.9 | max |\n|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |\n",
            l.count,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
        let _ = writeln!(
            md,
            "Open loop: a first attempt's latency counts from when it was due, so a generator that falls behind shows up here.\n"
        );

        if let Some(admin) = &self.admin {
            let _ = writeln!(md, "## Pipeline (admin API)\n");
            let s = &admin.samples;
            let max_of =
                |f: &dyn Fn(&super::sampler::Sample) -> Option<u64>| s.iter().filter_map(f).max();
            let show = |v: Option<u64>| v.map_or("—".to_string(), |v| v.to_string());
            let _ = writeln!(
                md,
                "- samples: {} ({} polls failed{})",
                s.len(),
                admin.failed_polls,
                admin
                    .first_failure
                    .as_ref()
                    .map_or(String::new(), |f| format!("; first: {f}"))
            );
            let _ = writeln!(
                md,
                "- deepest bus: {} events (limit {})",
                show(max_of(&|x| x.bus_messages)),
                show(max_of(&|x| x.bus_max_messages))
            );
            let _ = writeln!(
                md,
                "- largest total lag: {} events",
                show(max_of(&|x| x.total_lag()))
            );
            let oldest = s
                .iter()
                .flat_map(|x| {
                    x.triggers
                        .iter()
                        .filter_map(|t| t.oldest_unacked_age_seconds)
                })
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let _ = writeln!(
                md,
                "- oldest unacked event: {}",
                oldest.map_or("—".to_string(), |v| format!("{v:.1} s"))
            );
            let _ = writeln!(
                md,
                "- resident memory: {}\n",
                match max_of(&|x| x.rss_bytes) {
                    Some(bytes) => format!("up to {:.1} MiB", bytes as f64 / (1024.0 * 1024.0)),
                    None => "not exposed by the admin API (no `process.resident_memory_bytes` in /api/v1/status)".to_string(),
                }
            );
        }

        let _ = writeln!(md, "## Charts\n");
        for (name, chart) in charts {
            let _ = writeln!(md, "![{}]({name})\n", chart.title);
        }

        let _ = writeln!(md, "## Per second\n");
        let _ = writeln!(
            md,
            "| s | sent | retries | dropped | accepted | 429 bus_full | 429 rate_limited | 429 shed | 429 other | 5xx | 4xx | errors | p50 | p99 |"
        );
        let _ = writeln!(
            md,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, b) in self.seconds.iter().enumerate() {
            let (p50, p99) = if b.latency.count > 0 {
                (ms(b.latency.p50_us), ms(b.latency.p99_us))
            } else {
                ("—".to_string(), "—".to_string())
            };
            let _ = writeln!(
                md,
                "| {i} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {p50} | {p99} |",
                b.sent,
                b.retries,
                b.dropped_by_generator,
                b.accepted,
                b.rejected_bus_full,
                b.rejected_rate_limited,
                b.rejected_shed,
                b.rejected_other,
                b.server_errors,
                b.client_errors,
                b.errors
            );
        }
        md
    }
}

fn ms(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::sampler::{Sample, TriggerSample};

    fn report(admin: Option<Samples>) -> Report {
        let mut seconds = vec![Bucket::default(); 3];
        seconds[0].sent = 10;
        seconds[0].accepted = 8;
        seconds[0].rejected_bus_full = 2;
        seconds[0].latency = Latency {
            count: 10,
            p50_us: 1500,
            p90_us: 2000,
            p99_us: 3000,
            p999_us: 3000,
            max_us: 3100,
        };
        seconds[1].sent = 10;
        seconds[1].dropped_by_generator = 5;
        seconds[1].accepted = 10;
        let totals = Bucket {
            sent: 20,
            accepted: 18,
            rejected_bus_full: 2,
            dropped_by_generator: 5,
            ..Bucket::default()
        };
        Report {
            run: RunInfo {
                url: "http://127.0.0.1:1/orders".into(),
                admin: admin.as_ref().map(|_| "http://127.0.0.1:2".into()),
                mode: "open".into(),
                profile: Some("constant 10/s".into()),
                max_outstanding: Some(100),
                workers: None,
                duration_seconds: 2.0,
                payload_bytes: 64,
                priorities: Some("0:1,5:9".into()),
                priority_header: Some("X-Priority".into()),
                honor_retry_after: false,
                timeout_seconds: 1.0,
                started_at: "2026-01-01T00:00:00Z".into(),
                ids_used: 25,
            },
            totals,
            seconds,
            admin,
        }
    }

    fn samples() -> Samples {
        let sample = |at: f64, depth: u64| Sample {
            at_seconds: at,
            bus_messages: Some(depth),
            bus_bytes: Some(depth * 100),
            bus_max_messages: Some(50),
            triggers: vec![
                TriggerSample {
                    name: "orders/a".into(),
                    lag: Some(depth),
                    ack_pending: Some(1),
                    oldest_unacked_age_seconds: Some(0.5),
                    inflight: Some(1),
                },
                TriggerSample {
                    name: "orders/b".into(),
                    lag: Some(1),
                    ack_pending: None,
                    oldest_unacked_age_seconds: None,
                    inflight: None,
                },
            ],
            rss_bytes: None,
        };
        Samples {
            samples: vec![sample(1.0, 10), sample(2.0, 40)],
            ..Samples::default()
        }
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect()
    }

    #[test]
    fn writes_markdown_json_and_valid_svgs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/report");
        let files = report(Some(samples())).write(&out).unwrap();
        assert_eq!(
            names(&files),
            [
                "report.md",
                "report.json",
                "rate.svg",
                "latency.svg",
                "queue_depth.svg",
                "lag.svg"
            ]
        );
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            if file.extension().is_some_and(|e| e == "svg") {
                let doc = roxmltree::Document::parse(&text).unwrap();
                assert_eq!(doc.root_element().tag_name().name(), "svg", "{file:?}");
            }
        }
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("| accepted (2xx) | 18 |"), "{md}");
        assert!(md.contains("| 429 bus_full | 2 |"));
        assert!(md.contains("| dropped by the generator (too many outstanding) | 5 |"));
        assert!(md.contains("| 0 | 10 | 0 | 0 | 8 | 2 | 0 | 0 | 0 | 0 | 0 | 0 | 1.5 ms | 3.0 ms |"));
        assert!(md.contains("- deepest bus: 40 events (limit 50)"));
        assert!(md.contains("- largest total lag: 41 events"));
        assert!(md.contains("not exposed by the admin API"));
        assert!(md.contains("![Bus depth](queue_depth.svg)"));
        assert!(md.contains("`storm-0` … `storm-24`"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["totals"]["accepted"], 18);
        assert_eq!(json["seconds"][1]["dropped_by_generator"], 5);
        assert_eq!(json["admin"]["samples"][1]["bus_messages"], 40);
        // Lag: the total and one line per trigger.
        let lag = std::fs::read_to_string(out.join("lag.svg")).unwrap();
        assert_eq!(lag.matches("<polyline").count(), 3);
    }

    #[test]
    fn without_admin_only_the_storm_charts() {
        let dir = tempfile::tempdir().unwrap();
        let files = report(None).write(dir.path()).unwrap();
        assert_eq!(
            names(&files),
            ["report.md", "report.json", "rate.svg", "latency.svg"]
        );
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(!md.contains("## Pipeline"));
        // Only series with something in them: sent, accepted, bus_full, dropped.
        let rate = std::fs::read_to_string(dir.path().join("rate.svg")).unwrap();
        assert_eq!(rate.matches("<polyline").count(), 4);
    }

    #[test]
    fn an_unwritable_directory_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = report(None).write(&blocker.join("sub")).unwrap_err();
        assert!(err.to_string().contains("file/sub"), "{err}");
    }
}
