//! `spillway storm`: a load generator for spillway webhooks (and any HTTP
//! endpoint) that writes a report.
//!
//! - [`profile`]: the arrival rate over time (constant, ramp, spike, stages).
//! - [`schedule`]: the open loop (arrivals on a clock, overload is real,
//!   bounded outstanding requests); [`closed_loop`]: N workers, next
//!   request after the previous answer.
//! - [`target`]: the HTTP request (`{"id":"storm-<n>",…}`, priority header)
//!   and how answers are classified; [`deliver`]: one event and its
//!   retries after `Retry-After`.
//! - [`recorder`]: per-second counts and HDR latency, bounded memory;
//!   [`sampler`]: the pipeline's admin API once a second.
//! - [`report`]: `report.md`, `report.json` and SVG charts ([`svg`]).
//!
//! Guarantees: memory is bounded by the run's duration and its
//! outstanding-request bound, not by the target's speed; [`run`] returns
//! once every request has an outcome (each is bounded by the request
//! timeout). Not guaranteed: hitting very high rates on a busy machine
//! (late sends are still counted in the second they were due, with their
//! lateness in the latency).

pub mod closed_loop;
pub mod deliver;
pub mod priority_mix;
pub mod profile;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod sampler;
pub mod schedule;
pub mod svg;
pub mod target;
pub mod tracker;

use closed_loop::ClosedLoop;
use deliver::Window;
use priority_mix::PriorityMix;
use profile::Profile;
use recorder::{Recorder, MAX_SECONDS};
use report::{Report, RunInfo};
use sampler::Sampler;
use schedule::OpenLoop;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use target::HttpTarget;
use tokio_util::sync::CancellationToken;

/// Largest body a storm sends (`--payload-bytes`).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// Open or closed loop.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Arrivals follow `profile`; at most `max_outstanding` in flight.
    Open {
        profile: Profile,
        max_outstanding: usize,
    },
    /// `workers` loops of send-then-wait.
    Closed { workers: usize },
}

/// Everything a storm needs; see `spillway storm --help`.
#[derive(Debug, Clone)]
pub struct StormConfig {
    pub url: String,
    /// Base URL of the pipeline's admin server, sampled once a second.
    pub admin: Option<String>,
    pub mode: Mode,
    pub duration: Duration,
    pub payload_bytes: usize,
    /// The mix, sent in `priority_header`; `None` sends no header.
    pub priorities: Option<PriorityMix>,
    pub priority_header: String,
    pub honor_retry_after: bool,
    /// With `honor_retry_after`: retries per event at most (`u32::MAX`:
    /// until the run ends).
    pub max_retries: u32,
    /// Per attempt.
    pub timeout: Duration,
    /// Directory for the report.
    pub out: PathBuf,
    /// Show the progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Records accepted ids (and Retry-After facts) here, for a loss check.
    pub tracker: Option<Arc<tracker::Tracker>>,
}

/// A storm that could not run or report.
#[derive(Debug, thiserror::Error)]
pub enum StormError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error("cannot build the admin API client: {0}")]
    Sampler(reqwest::Error),
    #[error(transparent)]
    Report(#[from] report::ReportError),
}

/// A finished storm: its report and the files written.
#[derive(Debug)]
pub struct Finished {
    pub report: Report,
    pub files: Vec<PathBuf>,
}

impl StormConfig {
    fn check(&self) -> Result<(), StormError> {
        let invalid = |m: String| Err(StormError::Invalid(m));
        if self.duration.is_zero() || self.duration.as_secs() >= MAX_SECONDS as u64 {
            return invalid(format!(
                "duration {} must be above 0 and under {MAX_SECONDS} s",
                humantime::format_duration(self.duration)
            ));
        }
        if self.timeout.is_zero() {
            return invalid("the request timeout must be above 0".into());
        }
        if self.payload_bytes > MAX_PAYLOAD_BYTES {
            return invalid(format!(
                "payload of {} bytes is over the {MAX_PAYLOAD_BYTES}-byte maximum",
                self.payload_bytes
            ));
        }
        match &self.mode {
            Mode::Open {
                max_outstanding, ..
            } if !(1..=schedule::MAX_OUTSTANDING).contains(max_outstanding) => invalid(format!(
                "max outstanding {max_outstanding} must be between 1 and {}",
                schedule::MAX_OUTSTANDING
            )),
            Mode::Closed { workers } if !(1..=closed_loop::MAX_WORKERS).contains(workers) => {
                invalid(format!(
                    "concurrency {workers} must be between 1 and {}",
                    closed_loop::MAX_WORKERS
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Runs a storm, samples the admin API while it runs, and writes the report.
pub async fn run(config: StormConfig) -> Result<Finished, StormError> {
    config.check()?;
    let pool = match &config.mode {
        Mode::Open {
            max_outstanding, ..
        } => *max_outstanding,
        Mode::Closed { workers } => *workers,
    };
    let priorities = config
        .priorities
        .clone()
        .map(|mix| (config.priority_header.as_str(), mix));
    let target = Arc::new(HttpTarget::new(
        &config.url,
        priorities,
        config.payload_bytes,
        config.timeout,
        pool,
    )?);
    // Answers can come back up to one timeout after the last send.
    let seconds = (config.duration + config.timeout).as_secs_f64().ceil() as usize + 1;
    let recorder = match &config.tracker {
        Some(tracker) => Recorder::new(seconds).with_tracker(tracker.clone()),
        None => Recorder::new(seconds),
    };
    let recorder = Arc::new(recorder);
    let sampler = match &config.admin {
        Some(admin) => Some(Sampler::new(admin, seconds + 1).map_err(StormError::Sampler)?),
        None => None,
    };
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let window = Window::new(tokio::time::Instant::now(), config.duration);
    let stop_sampling = CancellationToken::new();
    let sampling = sampler.map(|s| tokio::spawn(s.run(window.start, stop_sampling.clone())));
    let visible = config.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = progress::Progress::start(recorder.clone(), window, visible);

    match &config.mode {
        Mode::Open {
            profile,
            max_outstanding,
        } => {
            let open = OpenLoop {
                profile: profile.clone(),
                duration: config.duration,
                max_outstanding: *max_outstanding,
                honor_retry_after: config.honor_retry_after,
                max_retries: config.max_retries,
            };
            open.run(target, recorder.clone(), window).await;
        }
        Mode::Closed { workers } => {
            let closed = ClosedLoop {
                workers: *workers,
                honor_retry_after: config.honor_retry_after,
                max_retries: config.max_retries,
            };
            closed.run(target, recorder.clone(), window).await;
        }
    }
    progress.finish();
    stop_sampling.cancel();
    let admin = match sampling {
        // A sampler task that panicked leaves the report without samples.
        Some(task) => task.await.ok(),
        None => None,
    };

    let mut recording = recorder.finish();
    // Keep the run's seconds and any later second that saw an answer.
    let run_seconds = config.duration.as_secs_f64().ceil() as usize;
    let used = recording
        .seconds
        .iter()
        .rposition(|b| b.completed() + b.sent + b.retries + b.dropped_by_generator > 0)
        .map_or(0, |i| i + 1);
    recording.seconds.truncate(used.max(run_seconds));

    let totals = recording.totals;
    let (mode, profile, max_outstanding, workers) = match &config.mode {
        Mode::Open {
            profile,
            max_outstanding,
        } => (
            "open",
            Some(profile.describe()),
            Some(*max_outstanding),
            None,
        ),
        Mode::Closed { workers } => ("closed", None, None, Some(*workers)),
    };
    let report = Report {
        run: RunInfo {
            url: config.url.clone(),
            admin: config.admin.clone(),
            mode: mode.to_string(),
            profile,
            max_outstanding,
            workers,
            duration_seconds: config.duration.as_secs_f64(),
            payload_bytes: config.payload_bytes,
            priorities: config.priorities.as_ref().map(|m| m.to_string()),
            priority_header: config
                .priorities
                .as_ref()
                .map(|_| config.priority_header.clone()),
            honor_retry_after: config.honor_retry_after,
            timeout_seconds: config.timeout.as_secs_f64(),
            started_at,
            ids_used: totals.sent + totals.dropped_by_generator,
        },
        totals,
        seconds: recording.seconds,
        admin,
    };
    let files = report.write(&config.out)?;
    Ok(Finished { report, files })
}
