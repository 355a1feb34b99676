//! Runs a built-in scenario in-process: the built-in downstream, the
//! scenario's pipeline (temporary data directory, webhook and admin on
//! free ports), the storm against the webhook, then a bounded wait for the
//! bus to drain, the checks, and `scenario.md` next to the storm's report.
//!
//! Guarantees: the pipeline is always shut down gracefully before [`run`]
//! returns, also when the run is cancelled or fails; the temporary
//! directory is removed. Memory: the storm's own bounds, two id bitsets
//! (one bit per storm id, sized from the profile) and one [`Sample`] per
//! second, at most [`MAX_SAMPLES`]. The status poll (once a second, 900 ms
//! timeout) never fails the run; a missed sample is just missing.
//! Not guaranteed: the free ports are picked by binding port 0 and letting
//! go, so another process could take one before the pipeline binds it (the
//! run then fails with a clear bind error).

use super::checks::{Facts, Sample};
use super::downstream;
use super::narrator::{Narrator, Plan, Reading};
use super::{Scale, Scenario, ScenarioError};
use crate::storm::tracker::Tracker;
use crate::storm::{Mode, StormConfig, StormError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Most status samples kept (one per second: an hour).
pub const MAX_SAMPLES: usize = 3600;

/// How long the pipeline may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// How the lines of the run are shown (stdout in the CLI).
pub type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// How to run a scenario.
#[derive(Clone)]
pub struct Settings {
    pub scale: Scale,
    /// Admin server address; a free port on 127.0.0.1 without one.
    pub admin: Option<SocketAddr>,
    /// Directory for the storm report and `scenario.md`.
    pub out: PathBuf,
    /// Try `xdg-open` on the dashboard (only when a display is set).
    pub open_browser: bool,
    /// The command line, for the report.
    pub command: String,
    pub say: Say,
}

/// A finished run.
pub struct Finished {
    pub facts: Facts,
    pub storm: crate::storm::Finished,
    /// `scenario.md`.
    pub scenario_md: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("cannot start the built-in downstream: {0}")]
    Downstream(std::io::Error),
    #[error("cannot find a free port: {0}")]
    Port(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the scenario's pipeline does not load:\n{0}")]
    Config(String),
    #[error("pipeline: {0}")]
    Pipeline(#[from] crate::topology::RunError),
    #[error("the pipeline stopped on its own")]
    PipelineStopped,
    #[error("the pipeline was not ready within {} s", .0.as_secs())]
    NotReady(Duration),
    #[error(transparent)]
    Storm(#[from] StormError),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("interrupted")]
    Interrupted,
}

fn free_port() -> Result<u16, RunnerError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(RunnerError::Port)
}

/// Most open files asked for: the storm's client sockets and the
/// webhook's server sockets share this process (a common soft limit of
/// 1024 would make the run fail on `accept`, not on backpressure).
const WANTED_OPEN_FILES: u64 = 16_384;

/// `nproc` and the load average, in words.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string());
    format!("{cores} cores, load average {load}")
}

/// Runs `scenario`; see the module docs. `cancel` (Ctrl-C) stops the storm
/// and shuts the pipeline down, and the run ends with
/// [`RunnerError::Interrupted`].
pub async fn run(
    scenario: &Scenario,
    settings: Settings,
    cancel: CancellationToken,
) -> Result<Finished, RunnerError> {
    settings.scale.check()?;
    crate::open_files::raise_limit(WANTED_OPEN_FILES);
    let scale = settings.scale;
    let profile = scenario.profile(scale)?;
    let (base_for, peak_for) = scenario.phases(scale);
    let duration = base_for * 2 + peak_for;
    // Ids are numbered in arrival order; a margin for rounding.
    let capacity = profile.arrivals_before(duration).ceil() as u64 + 1024;

    let stop_downstream = CancellationToken::new();
    let downstream = downstream::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        scenario.downstream_latency,
        capacity,
        stop_downstream.clone(),
    )
    .await
    .map_err(RunnerError::Downstream)?;
    let dir = tempfile::tempdir().map_err(|source| RunnerError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let port = free_port()?;
    let yaml = scenario.pipeline_yaml(port, &downstream.url(), scale)?;
    let file = dir.path().join(format!("{}.yaml", scenario.name));
    std::fs::write(&file, yaml).map_err(|source| RunnerError::Write {
        path: file.clone(),
        source,
    })?;
    let config = crate::config::load(std::slice::from_ref(&file)).map_err(|diagnostics| {
        RunnerError::Config(
            diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let admin = match settings.admin {
        Some(admin) => admin,
        None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let options = crate::topology::RunOptions {
        data_dir: dir.path().join("data"),
        admin,
        grace: Duration::from_secs(5),
        secrets_dir: dir.path().join("secrets"),
        files: Vec::new(),
        backlog: crate::backlog::BacklogLimits::default(),
        prune_consumers: false,
    };
    let stop_pipeline = CancellationToken::new();
    let pipeline = tokio::spawn(crate::topology::run_until(
        config,
        options,
        stop_pipeline.clone(),
    ));
    let run = Run {
        scenario,
        settings: &settings,
        admin: format!("http://{admin}"),
        webhook: format!("http://127.0.0.1:{port}{}", scenario.endpoint),
        downstream: &downstream,
        capacity,
        duration,
        base_for,
        peak_for,
    };
    let result = run.drive(&pipeline, &cancel).await;
    stop_pipeline.cancel();
    let stopped = pipeline.await;
    stop_downstream.cancel();
    match (result, stopped) {
        // A pipeline that failed explains a run that could not start.
        (Err(RunnerError::PipelineStopped | RunnerError::NotReady(_)), Ok(Err(err))) => {
            Err(err.into())
        }
        (result, _) => result,
    }
}

struct Run<'a> {
    scenario: &'a Scenario,
    settings: &'a Settings,
    admin: String,
    webhook: String,
    downstream: &'a downstream::Downstream,
    capacity: u64,
    duration: Duration,
    base_for: Duration,
    peak_for: Duration,
}

/// What the status watcher hands back.
struct Watched {
    samples: Vec<Sample>,
}

impl Run<'_> {
    async fn drive(
        &self,
        pipeline: &tokio::task::JoinHandle<Result<(), crate::topology::RunError>>,
        cancel: &CancellationToken,
    ) -> Result<Finished, RunnerError> {
        let say = &self.settings.say;
        crate::install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(900))
            .build()
            .map_err(RunnerError::Client)?;
        self.wait_ready(&client, pipeline, cancel).await?;
        say(&format!(
            "pipeline ready: webhook {}, dashboard {}/ (bus max_msgs {}, shedding priority > {} above {}, trigger rateLimit {}/s, downstream {} ms per call)",
            self.webhook,
            self.admin,
            self.scenario.max_msgs_at(self.settings.scale),
            self.scenario.shed_priority_above,
            self.scenario.shed_depth_at(self.settings.scale),
            self.scenario.rate_limit_at(self.settings.scale),
            self.scenario.downstream_latency.as_millis()
        ));
        if self.settings.open_browser {
            open_browser(&format!("{}/", self.admin));
        }
        let storm_end = self.duration;
        say(&format!(
            "storm: {}/s for {} s, {}/s for {} s, {}/s for {} s; priorities {}; honoring Retry-After (at most {} retries per event)",
            self.scenario.storm.base * self.settings.scale.rate,
            self.base_for.as_secs(),
            self.scenario.storm.peak * self.settings.scale.rate,
            self.peak_for.as_secs(),
            self.scenario.storm.base * self.settings.scale.rate,
            self.base_for.as_secs(),
            self.scenario.storm.priorities,
            self.scenario.storm.max_retries
        ));

        let load_at_start = machine();
        let tracker = Arc::new(Tracker::new(self.capacity));
        let start = Instant::now();
        let stop_watching = CancellationToken::new();
        let (idle_tx, mut idle_rx) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch(
            client.clone(),
            format!("{}/api/v1/status", self.admin),
            start,
            Plan {
                peak_end: self.base_for + self.peak_for,
                shed_priority_above: self.scenario.shed_priority_above,
            },
            storm_end,
            tracker.clone(),
            say.clone(),
            idle_tx,
            stop_watching.clone(),
        ));
        let storm = StormConfig {
            url: self.webhook.clone(),
            admin: Some(self.admin.clone()),
            mode: Mode::Open {
                profile: self.scenario.profile(self.settings.scale)?,
                max_outstanding: self.scenario.storm.max_outstanding,
            },
            duration: self.duration,
            payload_bytes: self.scenario.storm.payload_bytes,
            priorities: Some(self.scenario.priorities()?),
            priority_header: "X-Priority".to_string(),
            honor_retry_after: true,
            max_retries: self.scenario.storm.max_retries,
            timeout: self.scenario.storm.timeout,
            out: self.settings.out.clone(),
            progress: false,
            tracker: Some(tracker.clone()),
        };
        let finished = tokio::select! {
            _ = cancel.cancelled() => {
                stop_watching.cancel();
                return Err(RunnerError::Interrupted);
            }
            finished = crate::storm::run(storm) => finished?,
        };
        let t = &finished.report.totals;
        say(&format!(
            "[{:>3}s] storm over: {} sent (+{} retries), {} accepted, {} × 429; waiting up to {} s for the bus to drain",
            start.elapsed().as_secs(),
            t.sent,
            t.retries,
            t.accepted,
            t.rejected(),
            self.scenario.drain_limit.as_secs()
        ));
        let drained = tokio::select! {
            _ = cancel.cancelled() => {
                stop_watching.cancel();
                return Err(RunnerError::Interrupted);
            }
            idle = tokio::time::timeout(self.scenario.drain_limit, idle_rx.wait_for(|idle| *idle)) => {
                matches!(idle, Ok(Ok(_)))
            }
        };
        let shed_by_priority = match client.get(format!("{}/metrics", self.admin)).send().await {
            Ok(response) => shed_by_priority(&response.text().await.unwrap_or_default()),
            Err(_) => BTreeMap::new(),
        };
        stop_watching.cancel();
        let watched = watcher.await.unwrap_or(Watched {
            samples: Vec::new(),
        });

        let received = &self.downstream.received;
        let (lost, lost_examples) = tracker.accepted.missing_from(&received.ids, 5);
        let facts = Facts {
            scenario: self.scenario.name.to_string(),
            scaling: if self.settings.scale == Scale::FULL {
                self.scenario.scaling.to_string()
            } else {
                let scale = self.settings.scale;
                format!(
                    "{}; this run further scaled: durations x{}, bus and shedding threshold x{}, rates x{}",
                    self.scenario.scaling, scale.time, scale.bus, scale.rate
                )
            },
            command: self.settings.command.clone(),
            machine: format!(
                "{load_at_start} at the start, {} at the end (1/5/15 min); pipeline, storm and downstream share this one process",
                machine().rsplit("load average ").next().unwrap_or("unknown")
            ),
            storm: *t,
            ids_used: finished.report.run.ids_used,
            accepted_ids: tracker.accepted.len(),
            accepted_untracked: tracker.accepted.untracked(),
            rejected_without_retry_after: tracker.rejected_without_retry_after(),
            received_ids: received.ids.len(),
            duplicates: received.duplicates(),
            received_untracked: received.untracked(),
            lost,
            lost_examples,
            shed_by_priority,
            shed_priority_above: self.scenario.shed_priority_above,
            max_msgs: self.scenario.max_msgs_at(self.settings.scale),
            max_bytes: self.scenario.max_bytes,
            shed_depth: self.scenario.shed_depth_at(self.settings.scale),
            rss_limit: self.scenario.rss_limit,
            samples: watched.samples,
            peak_start: self.base_for,
            peak_end: self.base_for + self.peak_for,
            storm_end,
            rate_limit: self.scenario.rate_limit_at(self.settings.scale),
            drain_limit: self.scenario.drain_limit,
            drained,
        };
        let scenario_md = self.settings.out.join("scenario.md");
        std::fs::write(&scenario_md, facts.markdown()).map_err(|source| RunnerError::Write {
            path: scenario_md.clone(),
            source,
        })?;
        Ok(Finished {
            facts,
            storm: finished,
            scenario_md,
        })
    }

    async fn wait_ready(
        &self,
        client: &reqwest::Client,
        pipeline: &tokio::task::JoinHandle<Result<(), crate::topology::RunError>>,
        cancel: &CancellationToken,
    ) -> Result<(), RunnerError> {
        let deadline = Instant::now() + READY_LIMIT;
        let ready = format!("{}/readyz", self.admin);
        loop {
            if pipeline.is_finished() {
                return Err(RunnerError::PipelineStopped);
            }
            if let Ok(response) = client.get(&ready).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(RunnerError::NotReady(READY_LIMIT));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(RunnerError::Interrupted),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// Polls the status once a second until `stop`: narrates, keeps samples,
/// and says (through `idle`) when the bus is empty after the storm.
#[allow(clippy::too_many_arguments)]
async fn watch(
    client: reqwest::Client,
    url: String,
    start: Instant,
    plan: Plan,
    storm_end: Duration,
    tracker: Arc<Tracker>,
    say: Say,
    idle: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
) -> Watched {
    let mut narrator = Narrator::new(plan);
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval_at(start, Duration::from_secs(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Watched { samples },
            _ = ticks.tick() => {}
        }
        let status = match client.get(&url).send().await {
            Ok(response) => response.json::<crate::api::status::Status>().await.ok(),
            Err(_) => None,
        };
        let Some(status) = status else { continue };
        let at = start.elapsed();
        let reading = Reading::from_status(at, &status, tracker.last_bus_full_retry_after());
        for line in narrator.observe(reading) {
            say(&line);
        }
        if at >= storm_end && reading.depth == 0 && reading.lag == 0 && reading.ack_pending == 0 {
            idle.send_replace(true);
        }
        if samples.len() < MAX_SAMPLES {
            samples.push(Sample {
                reading,
                bus_bytes: status.bus.bytes,
                rss_bytes: status.process.resident_memory_bytes,
            });
        }
    }
}

/// `spillway_source_events_shed_total` summed per priority.
pub fn shed_by_priority(metrics: &str) -> BTreeMap<u8, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("spillway_source_events_shed_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let priority = labels
            .split(',')
            .find_map(|l| l.strip_prefix("priority=\""))
            .and_then(|p| p.trim_end_matches('"').parse::<u8>().ok());
        if let (Some(priority), Ok(value)) = (priority, value.trim().parse::<f64>()) {
            *out.entry(priority).or_insert(0) += value as u64;
        }
    }
    out
}

/// Opens `url` in a browser when there is a display; never fails the run.
fn open_browser(url: &str) {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    if !display {
        return;
    }
    let spawned = tokio::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut child) = spawned {
        // Reaped in the background; its outcome does not matter.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_counts_are_read_per_priority() {
        let metrics = "# TYPE spillway_source_events_shed_total counter\n\
spillway_source_events_shed_total{source=\"ads\",event=\"impressions\",priority=\"5\"} 120\n\
spillway_source_events_shed_total{source=\"other\",event=\"x\",priority=\"5\"} 3\n\
spillway_source_events_shed_total{source=\"ads\",event=\"impressions\",priority=\"0\"} 0\n\
spillway_source_events_total{source=\"ads\",event=\"impressions\",outcome=\"shed\"} 123\n";
        assert_eq!(
            shed_by_priority(metrics),
            BTreeMap::from([(0, 0), (5, 123)])
        );
    }
}
