//! Builds the pipeline from a [`Config`] and runs it until a signal.
//!
//! Start-up order matters: the bus first, then every trigger's durable
//! consumer (so no event published later is missed by a consumer that did
//! not exist yet), then the trigger runners, then the sources, and only then
//! is the process ready (`/readyz`).
//!
//! Shutdown (SIGTERM or SIGINT): sources answer 503 at once, runners stop
//! fetching and finish the invocations in flight for up to the grace
//! period, then the servers stop and the bus closes. Events not acked by
//! then stay on the bus (redelivered by a durable bus after restart).
//!
//! SIGHUP re-reads the `-f` files and applies the ConfigMap semaphore
//! limits only (see [`reload`]); every other change is logged as needing a
//! restart and ignored.
//!
//! Config that validates but cannot run yet is refused here with a message
//! that names the field ([`RunError::Config`]), never silently ignored.

mod conditions;

use crate::api::AdminState;
use crate::backlog::{BacklogLimits, BacklogStore, Replayer, TargetKind};
use crate::config::flow_control::{OnReject, SensorFlowControl, MAX_WINDOW};
use crate::config::sensor::Sensor;
use crate::config::workflow::WorkflowTemplate;
use crate::config::{Config, Located};
use crate::event::Event;
use crate::priority::{PriorityFrom, PrioritySource, DEFAULT_PRIORITY, PRIORITY_HEADER};
use crate::secrets::SecretStore;
use crate::sensor::evaluation::EvaluationPool;
use crate::sensor::runner::{look_ahead, PriorityDispatch};
use crate::sensor::{
    DependencyFilter, DependencyMatcher, RejectPolicy, RetryPolicy, TriggerLimits, TriggerRunner,
};
use crate::sources::webhook::{self, PortState};
use crate::sources::{EventName, SourceContext};
use crate::telemetry::alerts::{self, Alerting};
use crate::telemetry::Metrics;
use crate::triggers::postgres::PostgresTrigger;
use crate::triggers::workflow::semaphores::SemaphoreRegistry;
use crate::triggers::workflow::WorkflowTrigger;
use crate::triggers::{backlog::BacklogTrigger, http::HttpTrigger, log::LogTrigger, Trigger};
use spillway_bus::jetstream::JetStreamBus;
use spillway_bus::segment_bus::{SegmentBus, SegmentBusOptions};
use spillway_bus::{Bus, ConsumerConfig};
use spillway_flowctl::{
    AdaptiveConcurrency, Algorithm, ConcurrencyMode, GradualDrain, LagAutoscaler, RateLimiter,
    SheddingPolicy, DEFAULT_MAX_PENDING,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A trigger's credit window without `flowControl.maxInFlight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// How many instances sharing a JetStream consumer may each fill their
/// in-flight window (the seed's KEDA `maxReplicaCount`); sizes the
/// consumer's `max_ack_pending`.
pub const MAX_SCALE_OUT_INSTANCES: usize = 100;

/// Options from the command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the embedded durable bus keeps its log and consumer state
    /// (unused with a JetStream `url`).
    pub data_dir: PathBuf,
    pub admin: SocketAddr,
    /// How long in-flight triggers may take to finish on shutdown.
    pub grace: Duration,
    /// Where secrets named in the config (`authSecret` …) are read from
    /// when no `SPILLWAY_SECRET_<NAME>_<KEY>` variable is set: `DIR/<name>/<key>`.
    pub secrets_dir: PathBuf,
    /// The config files, re-read on SIGHUP (empty: SIGHUP only logs).
    pub files: Vec<PathBuf>,
    /// Bounds of the backlog store in `<data_dir>/backlog/`.
    pub backlog: BacklogLimits,
    /// Delete the embedded bus's durable consumers no trigger of this
    /// config binds (`--prune-consumers`); without it they are only listed
    /// in a warning.
    pub prune_consumers: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config is valid but asks for something this build cannot run.
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bus: {0}")]
    Bus(#[from] spillway_bus::BusError),
    #[error("{0}")]
    Backlog(#[from] crate::backlog::StoreError),
    #[error("event source {0}")]
    Source(#[from] crate::sources::SourceError),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Runs the pipeline until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run(config: Config, options: RunOptions) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    let signals = signal_listener(shutdown.clone())?;
    let result = run_until(config, options, shutdown).await;
    signals.abort();
    result
}

/// Runs the pipeline until `shutdown` is cancelled (tests cancel it directly).
pub async fn run_until(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    refuse_unsupported(&config)?;
    crate::install_tls_provider();
    // Before anything opens or listens: a missing secret is a config error.
    let secrets = SecretStore::new(&options.secrets_dir);
    let webhook_ports =
        webhook::ports(&config, &secrets).map_err(|e| RunError::Config(e.to_string()))?;

    let limits = config.bus.limits;
    // The lock is held until the pipeline stops: one process per data directory.
    let (bus, embedded, _data_dir_lock, backend): (
        Arc<dyn Bus>,
        Option<Arc<SegmentBus>>,
        Option<std::fs::File>,
        String,
    ) = match &config.bus.url {
        Some(url) => {
            let options = spillway_bus::jetstream::JetStreamOptions {
                replicas: config.bus.replicas,
                ..Default::default()
            };
            let bus =
                JetStreamBus::connect_with(url, &config.bus.name, limits, &[] as &[&str], options)
                    .await?;
            let backend = format!("NATS JetStream at {url}, stream {:?}", bus.stream_name());
            (bus, None, None, backend)
        }
        None => {
            let dir = options.data_dir.clone();
            let sync = config.bus.sync;
            let (bus, lock) =
                tokio::task::spawn_blocking(move || open_embedded_bus(&dir, limits, sync))
                    .await
                    .map_err(|e| RunError::Config(format!("opening the embedded bus: {e}")))??;
            let backend = match sync {
                spillway_bus::segment::SyncPolicy::Always => {
                    format!("embedded and durable in {}", options.data_dir.display())
                }
                other => format!(
                    "embedded in {} (sync_interval {other:?}: not every accepted event is on disk)",
                    options.data_dir.display()
                ),
            };
            (bus.clone(), Some(bus), Some(lock), backend)
        }
    };
    tracing::info!(
        "event bus {:?}: {backend}, enforcing max_msgs={} max_bytes={} max_msg_size={} discard={:?}",
        config.bus.name,
        show(limits.max_msgs),
        show(limits.max_bytes),
        show(limits.max_msg_size),
        limits.discard
    );
    let store = open_backlog(&options).await?;
    let metrics = Arc::new(Metrics::new());
    let alerting = Alerting::new(config.alerting.rules.clone(), &metrics);
    let draining = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));

    let http_client = reqwest::Client::builder()
        .build()
        .map_err(|e| RunError::Config(format!("cannot build the HTTP client: {e}")))?;
    let semaphores = Arc::new(
        SemaphoreRegistry::build(&config)
            .map_err(|e| RunError::Config(format!("workflow semaphores: {e}")))?,
    );
    warn_ignored_images(&config.workflow_templates);
    let workflows = Workflows {
        templates: &config.workflow_templates,
        semaphores: &semaphores,
    };
    let mut runners = Vec::new();
    // A JetStream bus may be shared by several spillway instances.
    let shared_bus = config.bus.url.is_some();
    for sensor in &config.sensors {
        runners.extend(
            build_runners(
                sensor,
                &bus,
                shared_bus,
                &metrics,
                &Resources {
                    http_client: &http_client,
                    store: &store,
                    workflows: &workflows,
                    secrets: &secrets,
                },
            )
            .await?,
        );
    }
    let handles: Vec<_> = runners.iter().map(TriggerRunner::handle).collect();
    if let Some(embedded) = &embedded {
        let bound: Vec<&str> = handles.iter().map(|h| h.consumer.name()).collect();
        orphan_consumers(embedded, &bound, options.prune_consumers).await;
    }

    // Bind every port before serving anything, so a taken port fails start-up cleanly.
    let mut servers = Vec::new();
    let admin_listener = bind(options.admin).await?;
    let admin_addr = admin_listener.local_addr().unwrap_or(options.admin);
    let alert_sources = alerts::Sources {
        stream: config.bus.name.clone(),
        bus: Arc::clone(&bus),
        triggers: handles.clone(),
        sources: config
            .event_sources
            .iter()
            .map(|s| s.doc.metadata.name().to_string())
            .collect(),
        metrics: Arc::clone(&metrics),
        workflows: Arc::clone(&semaphores),
    };
    let admin_state = Arc::new(AdminState {
        stream: config.bus.name.clone(),
        backend: if config.bus.url.is_some() {
            "jetstream"
        } else {
            "embedded"
        },
        bus: Arc::clone(&bus),
        embedded: embedded.clone(),
        triggers: handles,
        sources: config
            .event_sources
            .iter()
            .flat_map(|s| {
                let source = s.doc.metadata.name().to_string();
                s.doc
                    .spec
                    .event_names()
                    .into_iter()
                    .map(move |event| EventName {
                        source: source.clone(),
                        event: event.value.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        workflows: Arc::clone(&semaphores),
        metrics: Arc::clone(&metrics),
        alerts: Arc::clone(&alerting),
        ready: Arc::clone(&ready),
        draining: Arc::clone(&draining),
        backlog: Arc::new(Replayer::new(
            Arc::clone(&store),
            Arc::clone(&bus),
            replay_targets(&config),
        )),
        started: std::time::Instant::now(),
        history: Default::default(),
    });
    let server_stop = CancellationToken::new();
    let mut webhook_listeners = Vec::new();
    for port in webhook_ports {
        let addr = SocketAddr::from(([0, 0, 0, 0], port.port));
        let listener = bind(addr).await?;
        tracing::info!("webhook listening on {addr} {}", port.summary());
        let state = Arc::new(PortState {
            endpoints: port.endpoints,
            bus: Arc::clone(&bus),
            metrics: Arc::clone(&metrics),
            draining: Arc::clone(&draining),
        });
        webhook_listeners.push((listener, webhook::router(state), port.limits));
    }
    tracing::info!("admin server on http://{admin_addr}");
    servers.push(tokio::spawn(crate::api::history::run(
        Arc::clone(&admin_state),
        server_stop.clone(),
    )));
    servers.push(serve(
        admin_listener,
        crate::api::router(admin_state),
        server_stop.clone(),
    ));

    let runner_stop = CancellationToken::new();
    let mut runner_tasks = tokio::task::JoinSet::new();
    for runner in runners {
        runner_tasks.spawn(runner.run(runner_stop.clone()));
    }
    // Non-webhook sources connect to their upstream here; a failure stops
    // the ones already started and fails start-up.
    let source_ctx = SourceContext {
        bus: Arc::clone(&bus),
        metrics: Arc::clone(&metrics),
        stop: CancellationToken::new(),
    };
    let mut source_tasks = Vec::new();
    for source in &config.event_sources {
        match crate::sources::start_sources(source, &source_ctx).await {
            Ok(started) => source_tasks.extend(started),
            Err(err) => {
                source_ctx.stop.cancel();
                runner_stop.cancel();
                server_stop.cancel();
                return Err(err.into());
            }
        }
    }
    for (listener, router, limits) in webhook_listeners {
        servers.push(tokio::spawn(webhook::serve(
            listener,
            router,
            limits,
            server_stop.clone(),
        )));
    }
    let notify = config.alerting.alertmanager.as_ref().map(|am| {
        let (notifier, task) = alerts::Notifier::spawn(
            alerts::NotifierConfig {
                url: am.url.clone(),
                timeout: am.timeout,
                max_queue: am.max_queue,
                initial_backoff: Duration::from_secs(1),
            },
            http_client.clone(),
            Arc::clone(&metrics),
            server_stop.clone(),
        );
        servers.push(task);
        alerts::Notify {
            notifier,
            resend_interval: am.resend_interval,
            generator_url: Some(format!("http://{admin_addr}/api/v1/status")),
        }
    });
    let rules = &config.alerting.rules;
    tracing::info!(
        "alerting: {} rule(s) every {}, {}",
        rules.rules.len(),
        humantime::format_duration(rules.evaluation_interval),
        match &config.alerting.alertmanager {
            Some(am) => format!("notifying {}", am.url),
            None => "no Alertmanager configured".to_string(),
        }
    );
    servers.push(tokio::spawn(Arc::clone(&alerting).run(
        alert_sources,
        notify,
        server_stop.clone(),
    )));
    let reloads = reload_listener(
        options.files.clone(),
        config.clone(),
        Arc::clone(&semaphores),
    )?;
    ready.store(true, Ordering::Release);
    tracing::info!("ready");

    shutdown.cancelled().await;
    reloads.abort();
    tracing::info!(grace = ?options.grace, "shutting down: sources answer 503, finishing in-flight triggers");
    draining.store(true, Ordering::Release);
    // Sources first: they settle the events in hand (ack or hand back
    // upstream) while the bus is still open.
    source_ctx.stop.cancel();
    let settled = tokio::time::timeout(options.grace, async {
        for task in source_tasks.iter_mut() {
            let _ = task.await;
        }
    })
    .await;
    if settled.is_err() {
        tracing::warn!("grace period over before every event source stopped");
        for task in &source_tasks {
            task.abort();
        }
    }
    runner_stop.cancel();
    let drained = tokio::time::timeout(options.grace, async {
        while runner_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; unfinished trigger invocations stay unacked on the bus");
        runner_tasks.abort_all();
    }
    server_stop.cancel();
    for server in servers {
        let _ = server.await;
    }
    bus.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the backlog store of the data dir and says what it holds.
async fn open_backlog(options: &RunOptions) -> Result<Arc<BacklogStore>, RunError> {
    let dir = options.data_dir.clone();
    let limits = options.backlog;
    let store = tokio::task::spawn_blocking(move || BacklogStore::open(&dir, limits))
        .await
        .map_err(|e| RunError::Config(format!("opening the backlog store: {e}")))??;
    tracing::info!(
        "backlog store in {}: {} event(s), {} bytes stored (limits: {} events, {} bytes)",
        store.dir().display(),
        store.events(),
        store.bytes(),
        limits.max_events,
        limits.max_bytes
    );
    Ok(Arc::new(store))
}

/// Every trigger a backlog record may name, and whether it runs events.
fn replay_targets(config: &Config) -> HashMap<String, TargetKind> {
    let mut targets = HashMap::new();
    for sensor in &config.sensors {
        let sensor_name = sensor.doc.metadata.name().to_string();
        for trigger in &sensor.doc.spec.triggers {
            let stores = trigger
                .template
                .k8s
                .as_ref()
                .is_some_and(|k| k.value.resource_kind() == "ConfigMap");
            let kind = if stores {
                TargetKind::StoresForLater
            } else {
                TargetKind::Runs
            };
            targets.insert(
                crate::backlog::target(&sensor_name, &trigger.template.name.value),
                kind,
            );
        }
    }
    targets
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, RunError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(err) = result {
            tracing::error!("server stopped: {err}");
        }
    })
}

/// Resolves on SIGTERM or SIGINT by cancelling `shutdown`.
fn signal_listener(shutdown: CancellationToken) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        shutdown.cancel();
    }))
}

/// Applies ConfigMap semaphore limits from the files on every SIGHUP.
fn reload_listener(
    files: Vec<PathBuf>,
    running: Config,
    semaphores: Arc<SemaphoreRegistry>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let files = files.clone();
            // Reading and parsing files is blocking work.
            match tokio::task::spawn_blocking(move || crate::config::load(&files)).await {
                Ok(loaded) => reload(&running, loaded, &semaphores),
                Err(err) => tracing::error!("SIGHUP: reading the config failed: {err}"),
            }
        }
    }))
}

/// SIGHUP: applies the semaphore limits of `loaded` and says what else
/// changed (those changes need a restart and are ignored). A config with
/// errors changes nothing.
pub fn reload(
    running: &Config,
    loaded: Result<Config, Vec<crate::config::Diagnostic>>,
    semaphores: &SemaphoreRegistry,
) {
    let new = match loaded {
        Ok(new) => new,
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                tracing::error!("SIGHUP: {diagnostic}");
            }
            tracing::error!(
                "SIGHUP: the config has {} problem(s); nothing was changed",
                diagnostics.len()
            );
            return;
        }
    };
    let (changes, problems) = semaphores.reload(&new);
    for problem in &problems {
        tracing::error!("SIGHUP: {problem}; keeping its current limit");
    }
    for change in &changes {
        tracing::info!(
            "SIGHUP: semaphore {} limit {} → {}{}",
            change.name,
            change.from,
            change.to,
            if change.to < change.from {
                " (running workflows finish; no new one starts until fewer than the new limit run)"
            } else {
                ""
            }
        );
    }
    let ignored: Vec<&str> = [
        ("EventBus", running.bus != new.bus),
        ("EventSource", running.event_sources != new.event_sources),
        ("Sensor", running.sensors != new.sensors),
        (
            "WorkflowTemplate",
            running.workflow_templates != new.workflow_templates,
        ),
    ]
    .into_iter()
    .filter_map(|(kind, changed)| changed.then_some(kind))
    .collect();
    if !ignored.is_empty() {
        tracing::warn!(
            "SIGHUP: {} documents differ from the running config; only ConfigMap semaphore limits are applied on SIGHUP, restart to apply the rest",
            ignored.join(", ")
        );
    }
    if changes.is_empty() && problems.is_empty() {
        tracing::info!("SIGHUP: config re-read; no semaphore limit changed");
    }
}

/// One warning for every template whose container image is ignored.
fn warn_ignored_images(templates: &[Located<WorkflowTemplate>]) {
    let with_image: Vec<String> = templates
        .iter()
        .flat_map(|t| {
            t.doc.spec.templates.iter().filter_map(move |entry| {
                let image = entry
                    .container
                    .as_ref()
                    .and_then(|c| c.value.image.as_ref())
                    .or(entry.script.as_ref().and_then(|s| s.value.image.as_ref()))?;
                Some(format!(
                    "{}/{} ({image})",
                    t.doc.metadata.name(),
                    entry.name.value
                ))
            })
        })
        .collect();
    if !with_image.is_empty() {
        tracing::warn!(
            "workflow templates run their command on this machine; `image` is ignored for: {}",
            with_image.join(", ")
        );
    }
}

/// What workflow triggers are built from.
struct Workflows<'a> {
    templates: &'a [Located<WorkflowTemplate>],
    semaphores: &'a SemaphoreRegistry,
}

/// Opens (recovering) the segment-log bus in `dir`, after taking the
/// directory's lock so a second process cannot corrupt it.
fn open_embedded_bus(
    dir: &std::path::Path,
    limits: spillway_bus::Limits,
    sync: spillway_bus::segment::SyncPolicy,
) -> Result<(Arc<SegmentBus>, std::fs::File), RunError> {
    let unusable = |what: &str, e: std::io::Error| {
        RunError::Config(format!("--data-dir {}: {what}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| unusable("cannot create it", e))?;
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| unusable("cannot open its lock file", e))?;
    if let Err(e) = lock.try_lock() {
        return Err(RunError::Config(format!(
            "--data-dir {} is in use by another spillway process ({e}); give each process its own directory",
            dir.display()
        )));
    }
    let mut options = SegmentBusOptions::default();
    options.log.sync = sync;
    let (bus, report) = SegmentBus::open(dir, limits, options)?;
    let recovery = &report.recovery;
    if recovery.corrupt_regions > 0 || recovery.bytes_truncated > 0 {
        tracing::warn!(
            "recovered the event bus in {}: {} corrupt region(s) ({} bytes) skipped, {} bytes of torn tail truncated",
            dir.display(),
            recovery.corrupt_regions,
            recovery.corrupt_bytes,
            recovery.bytes_truncated
        );
    }
    if report.held > 0 {
        tracing::info!(
            "event bus in {}: {} event(s) from before the restart are waiting for their triggers",
            dir.display(),
            report.held
        );
    }
    Ok((bus, lock))
}

/// The embedded bus's durable consumers that no trigger of this config is
/// bound to: a sensor or trigger removed from the config (deleting an Argo
/// Sensor deletes its consumer) keeps holding every event it had not acked
/// and every new one matching its filter, pinning the queue depth until
/// the bus is full.
///
/// Listed in a warning by default; deleted only with `prune` (`spillway
/// run --prune-consumers`), because a config loaded in part (a forgotten
/// `-f` file) looks exactly like removed sensors, and a delete releases
/// their events for good. Runs once every trigger's consumer is bound, so a
/// renamed trigger's new consumer already holds what the old one still
/// held. A failed delete is a warning: the pipeline runs either way. Not
/// done on JetStream: other instances with another config may share the
/// stream. Not done when the config has no trigger at all: that is a
/// pipeline run without its sensors on purpose (events wait in the bus).
async fn orphan_consumers(bus: &SegmentBus, bound: &[&str], prune: bool) {
    let names = bus.consumer_names();
    if bound.is_empty() {
        if !names.is_empty() {
            tracing::info!(
                "no sensor trigger in the config: keeping the bus's {} durable consumer(s) {names:?} and the events they hold",
                names.len()
            );
        }
        return;
    }
    let orphans: Vec<String> = names
        .into_iter()
        .filter(|name| !bound.contains(&name.as_str()))
        .collect();
    if orphans.is_empty() {
        return;
    }
    if !prune {
        tracing::warn!(
            "durable consumer(s) {orphans:?} on the bus belong to no sensor trigger of this config: they keep holding their events (and the queue depth up); if their sensors were removed for good, restart with --prune-consumers to delete them"
        );
        return;
    }
    for name in orphans {
        let before = bus.stats().messages;
        match bus.delete_consumer(&name).await {
            Ok(true) => {
                let released = before.saturating_sub(bus.stats().messages);
                tracing::warn!(
                    "deleted durable consumer {name:?} (--prune-consumers): no sensor trigger in the config uses it any more; {released} event(s) only it still held were released"
                );
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(
                "cannot delete durable consumer {name:?}: {err}; it keeps its events"
            ),
        }
    }
}

/// One runner per trigger, each with its own durable consumer.
async fn build_runners(
    sensor: &Located<Sensor>,
    bus: &Arc<dyn Bus>,
    shared_bus: bool,
    metrics: &Arc<Metrics>,
    resources: &Resources<'_>,
) -> Result<Vec<TriggerRunner>, RunError> {
    let store = resources.store;
    let sensor_name = sensor.doc.metadata.name().to_string();
    let mut dependencies: Vec<DependencyMatcher> = Vec::new();
    // One pool per sensor, shared by its dependencies; its threads start at
    // the first script or jq evaluation.
    let evaluations = EvaluationPool::new(
        &sensor_name,
        SensorFlowControl::evaluation_settings(
            sensor.doc.spec.flow_control.as_ref().map(|f| &f.value),
        ),
        Some(Arc::clone(metrics)),
    );
    for d in &sensor.doc.spec.dependencies {
        // Compiled once here; `validate` already reported what does not compile.
        let filters = DependencyFilter::compile(d, &evaluations).map_err(|problems| {
            let (pos, message) = problems.into_iter().next().unwrap_or_default();
            RunError::Config(format!("{}:{pos}: {message}", sensor.file.display()))
        })?;
        dependencies.push(DependencyMatcher {
            name: d.name.value.clone(),
            subject: Event::subject_for(&d.event_source_name.value, &d.event_name.value),
            filters: filters.map(Arc::new),
        });
    }
    let spec = &sensor.doc.spec;
    let sensor_burst = spec
        .flow_control
        .as_ref()
        .and_then(|f| f.value.burst.as_ref())
        .map(|b| b.value);
    // One limiter for the whole sensor: its triggers share the budget.
    let sensor_rate = spec
        .rate_limit
        .as_ref()
        .and_then(|r| r.value.to_flowctl(sensor_burst))
        .map(|limit| Arc::new(RateLimiter::new(limit)));
    let sensor_flow = spec.flow_control.as_ref().map(|f| &f.value);
    // With a priority source or shedding, every trigger of the sensor sheds
    // and dispatches by priority; without, bus order. Without its own
    // `priority` block the sensor reads the priority a source stamped.
    let priority_source = sensor_flow
        .and_then(|f| f.priority.as_ref())
        .and_then(|p| PrioritySource::from_config(&p.value));
    let shedding = sensor_flow
        .and_then(|f| f.shedding.as_ref())
        .map(|rule| {
            SheddingPolicy::single(
                rule.value.queue_depth_above.value,
                i64::from(rule.value.shed_priority_above.value),
            )
            .map_err(|e| {
                RunError::Config(format!("sensor {sensor_name}: flowControl.shedding: {e}"))
            })
        })
        .transpose()?;
    let dispatch_by_priority = priority_source.is_some() || shedding.is_some();
    let mut runners = Vec::new();
    for trigger in &spec.triggers {
        let name = trigger.template.name.value.clone();
        let built = Built {
            sensor: &sensor_name,
            replay_to: &name,
            resources,
        };
        let Some(action) = built.trigger(trigger)? else {
            // refuse_unsupported() already rejected every other kind.
            continue;
        };
        let dlq = match &trigger.dlq_trigger {
            Some(dlq) => built.trigger(&dlq.value)?,
            None => None,
        };
        let retry = trigger
            .retry_strategy
            .as_ref()
            .map(|r| RetryPolicy::from(&r.value))
            .unwrap_or_default();
        let flow = trigger.flow_control.as_ref().map(|f| &f.value);
        let max_pending = flow
            .and_then(|f| f.max_pending.as_ref())
            .map_or(DEFAULT_MAX_PENDING, |m| m.value as usize);
        // A workflow waiting on its semaphore holds its place in the window,
        // so by default the window fits the semaphore and the pending queue.
        let default_window = action
            .workflow_gate()
            .and_then(|gate| gate.limit())
            .map_or(DEFAULT_MAX_IN_FLIGHT, |limit| {
                (limit + max_pending).min(MAX_WINDOW as usize)
            });
        let on_reject = match flow.and_then(|f| f.on_reject.as_ref()).map(|o| o.value) {
            None | Some(OnReject::Error) => RejectPolicy::Error,
            Some(OnReject::Drop) => RejectPolicy::Drop,
            Some(OnReject::Backlog) => RejectPolicy::Backlog(Arc::clone(store)),
        };
        let autoscale = flow
            .and_then(|f| f.autoscale.as_ref())
            .map(|a| a.value.to_flowctl());
        // Each autoscaled worker runs one invocation, so by default the
        // window fits the most workers.
        let default_window = autoscale.map_or(default_window, |policy| {
            default_window.max(policy.max as usize)
        });
        let max_in_flight = flow
            .and_then(|f| f.max_in_flight.as_ref())
            .map_or(default_window, |m| m.value as usize);
        if let Some(policy) = autoscale.filter(|p| p.max as usize > max_in_flight) {
            tracing::warn!(
                "sensor {sensor_name}, trigger {name}: autoscale.max is {} but maxInFlight is {max_in_flight}; at most {max_in_flight} workers will run",
                policy.max
            );
        }
        let autoscale = autoscale.map(LagAutoscaler::new).transpose().map_err(|e| {
            RunError::Config(format!(
                "sensor {sensor_name}, trigger {name}: autoscale: {e}"
            ))
        })?;
        let burst = flow.and_then(|f| f.burst.as_ref()).map(|b| b.value);
        let rate = trigger
            .rate_limit
            .as_ref()
            .and_then(|r| r.value.to_flowctl(burst))
            .map(RateLimiter::new);
        // Adaptive by default where there is a downstream to listen to.
        let mode = flow.and_then(|f| f.concurrency.as_ref()).map_or(
            if matches!(action, Trigger::Http(_) | Trigger::Postgres(_)) {
                ConcurrencyMode::Aimd
            } else {
                ConcurrencyMode::Fixed
            },
            |c| c.value.0,
        );
        let concurrency = AdaptiveConcurrency::new(Algorithm::for_mode(mode, max_in_flight))
            .map_err(|e| {
                RunError::Config(format!(
                    "sensor {sensor_name}, trigger {name}: concurrency: {e}"
                ))
            })?;
        let slow_start = match flow.and_then(|f| f.slow_start.as_ref()) {
            Some(slow) => Some(GradualDrain::new(slow.value.to_flowctl()).map_err(|e| {
                RunError::Config(format!(
                    "sensor {sensor_name}, trigger {name}: slowStart: {e}"
                ))
            })?),
            None => None,
        };
        let priority = dispatch_by_priority.then(|| PriorityDispatch {
            source: priority_source.clone().unwrap_or(PrioritySource {
                from: PriorityFrom::Header(PRIORITY_HEADER.to_string()),
                default: DEFAULT_PRIORITY,
            }),
            shedding: shedding.clone(),
            look_ahead: look_ahead(max_in_flight),
        });
        let limits = TriggerLimits {
            max_in_flight,
            concurrency,
            retry,
            rate,
            sensor_rate: sensor_rate.clone(),
            slow_start,
            ack_wait: flow
                .and_then(|f| f.ack_wait.as_ref())
                .map_or(crate::config::flow_control::DEFAULT_ACK_WAIT, |a| a.value.0),
            at_least_once: trigger.at_least_once.as_ref().is_none_or(|f| f.value),
            max_pending,
            on_reject,
            priority,
            autoscale,
        };
        let correlation = conditions::correlation(&sensor_name, spec, trigger)?;
        // A trigger with conditions reads only the dependencies they name.
        let dependencies: Vec<DependencyMatcher> = match &correlation {
            Some(c) => dependencies
                .iter()
                .filter(|d| c.dependencies.contains(&d.name))
                .cloned()
                .collect(),
            None => dependencies.clone(),
        };
        let mut consumer_config = ConsumerConfig::new(format!("{sensor_name}-{name}"));
        consumer_config.filter_subjects = dependencies.iter().map(|d| d.subject.clone()).collect();
        // Every instance of a scaled-out pipeline pulls from the same durable
        // consumer, each holding at most max_fetched (its slots and its
        // priority look-ahead): the consumer-wide cap must leave room for
        // all of them.
        // Events waiting for a trigger's conditions are unacked too.
        let max_fetched = limits
            .max_fetched()
            .saturating_add(correlation.as_ref().map_or(0, |c| c.max_waiting()));
        consumer_config.max_ack_pending = if shared_bus {
            max_fetched.saturating_mul(MAX_SCALE_OUT_INSTANCES)
        } else {
            max_fetched
        };
        // Invocations in progress are kept alive (every ack_wait / 3), so
        // ack_wait only bounds how late a crashed instance's events come back.
        consumer_config.ack_wait = limits.ack_wait;
        let consumer = bus.consumer(consumer_config).await?;
        let runner = TriggerRunner::new(
            &sensor_name,
            &name,
            dependencies,
            action,
            dlq,
            consumer,
            limits,
            Arc::clone(metrics),
        );
        runners.push(match correlation {
            Some(correlation) => runner.correlate(correlation),
            None => runner,
        });
    }
    Ok(runners)
}

/// What triggers are built with, shared by every sensor.
struct Resources<'a> {
    http_client: &'a reqwest::Client,
    store: &'a Arc<BacklogStore>,
    workflows: &'a Workflows<'a>,
    /// `urlSecret` of postgres triggers.
    secrets: &'a SecretStore,
}

/// What building the triggers of one sensor trigger (and its DLQ) needs.
struct Built<'a> {
    sensor: &'a str,
    /// The sensor trigger being built: what backlog records are replayed to.
    replay_to: &'a str,
    resources: &'a Resources<'a>,
}

impl Built<'_> {
    /// The runnable trigger of `trigger`'s template; `None` for kinds this
    /// build cannot run (refused earlier by [`refuse_unsupported`]).
    fn trigger(
        &self,
        trigger: &crate::config::sensor::Trigger,
    ) -> Result<Option<Trigger>, RunError> {
        if let Some(k8s) = &trigger.template.k8s {
            if k8s.value.resource_kind() == "ConfigMap" {
                return Ok(Some(Trigger::Backlog(BacklogTrigger::new(
                    Arc::clone(self.resources.store),
                    self.sensor,
                    self.replay_to,
                ))));
            }
        }
        if let Some(postgres) = &trigger.template.postgres {
            return self.postgres(trigger, &postgres.value).map(Some);
        }
        build_trigger(
            self.sensor,
            trigger,
            self.resources.http_client,
            self.resources.workflows,
        )
    }

    /// A postgres trigger, its `urlSecret` resolved now: a missing secret
    /// stops start-up like any config error.
    fn postgres(
        &self,
        trigger: &crate::config::sensor::Trigger,
        config: &crate::config::sensor::PostgresTrigger,
    ) -> Result<Trigger, RunError> {
        let name = &trigger.template.name.value;
        let problem =
            |e: String| RunError::Config(format!("sensor {}, trigger {name}: {e}", self.sensor));
        let url = match (&config.url, &config.url_secret) {
            (Some(url), _) => url.value.clone(),
            (None, Some(selector)) => {
                let value = self
                    .resources
                    .secrets
                    .resolve(&selector.value)
                    .map_err(|e| problem(e.to_string()))?;
                String::from_utf8(value.as_bytes().to_vec())
                    .map_err(|_| problem("urlSecret is not UTF-8".to_string()))?
                    .trim()
                    .to_string()
            }
            (None, None) => return Err(problem("postgres needs `url` or `urlSecret`".into())),
        };
        PostgresTrigger::new(self.sensor, name, config, &url)
            .map(Trigger::Postgres)
            .map_err(|e| problem(e.to_string()))
    }
}

/// The runnable http, log or workflow (argoWorkflow, k8s Workflow) trigger
/// of `trigger`'s template; `None` for other kinds.
fn build_trigger(
    sensor: &str,
    trigger: &crate::config::sensor::Trigger,
    http_client: &reqwest::Client,
    workflows: &Workflows<'_>,
) -> Result<Option<Trigger>, RunError> {
    let name = &trigger.template.name.value;
    if let Some(http) = &trigger.template.http {
        let allowed = trigger
            .policy
            .as_ref()
            .and_then(|p| p.value.status.as_ref())
            .map(|s| s.allow.iter().map(|code| code.value).collect());
        let trigger_parameters = trigger.parameters.as_deref().unwrap_or_default();
        let http = HttpTrigger::new(
            http_client.clone(),
            &http.value,
            trigger_parameters,
            allowed,
        )
        .map_err(|e| RunError::Config(format!("sensor {sensor}, trigger {name}: {e}")))?;
        return Ok(Some(Trigger::Http(http)));
    }
    // A k8s trigger creating a Workflow runs exactly like an argoWorkflow submit.
    let k8s_workflow = trigger
        .template
        .k8s
        .as_ref()
        .filter(|k| k.value.resource_kind() == "Workflow")
        .map(|k| crate::triggers::workflow::as_argo_workflow(&k.value));
    let workflow = trigger
        .template
        .argo_workflow
        .as_ref()
        .map(|w| &w.value)
        .or(k8s_workflow.as_ref());
    if let Some(workflow) = workflow {
        let problem = |e: String| RunError::Config(format!("sensor {sensor}, trigger {name}: {e}"));
        let template = crate::triggers::workflow::template_ref(workflow).unwrap_or("");
        let gate = workflows
            .semaphores
            .gate(template)
            .ok_or_else(|| problem(format!("WorkflowTemplate {template:?} is not loaded")))?;
        let workflow = WorkflowTrigger::new(trigger, workflow, workflows.templates, gate)
            .map_err(|e| problem(e.to_string()))?;
        return Ok(Some(Trigger::Workflow(workflow)));
    }
    if let Some(log) = &trigger.template.log {
        return Ok(Some(Trigger::Log(LogTrigger::new(
            sensor,
            name,
            log.value.interval_seconds.unwrap_or(0),
        ))));
    }
    Ok(None)
}

/// Refuses config that validates but that this build cannot honour yet.
fn refuse_unsupported(config: &Config) -> Result<(), RunError> {
    let mut problems = Vec::new();
    for sensor in &config.sensors {
        let at = |pos: crate::config::yaml::Pos| format!("{}:{}", sensor.file.display(), pos);
        problems.extend(conditions::unsupported(&sensor.doc.spec, &at));
        for trigger in &sensor.doc.spec.triggers {
            let t = &trigger.template;
            if let Some(dlq) = &trigger.dlq_trigger {
                let d = &dlq.value.template;
                let stores = d
                    .k8s
                    .as_ref()
                    .is_some_and(|k| k.value.resource_kind() == "ConfigMap");
                if d.http.is_none() && d.log.is_none() && !stores {
                    problems.push(format!(
                        "{}: trigger {:?}: its dlqTrigger {:?} must be an http, log or store-for-later (k8s ConfigMap backlog-) trigger in this build",
                        at(d.name.pos),
                        t.name.value,
                        d.name.value
                    ));
                }
            }
            if let Some(w) = &t.argo_workflow {
                if crate::triggers::workflow::template_ref(&w.value).is_none() {
                    problems.push(format!(
                        "{}: trigger {:?}: argoWorkflow needs a Workflow resource written as a mapping with `spec.workflowTemplateRef` or `spec.templates`",
                        at(w.pos),
                        t.name.value
                    ));
                }
            }
            let runs_workflow = t.argo_workflow.is_some()
                || t.k8s
                    .as_ref()
                    .is_some_and(|k| k.value.resource_kind() == "Workflow");
            if let (Some(flow), false) = (&trigger.flow_control, runs_workflow) {
                if let Some(pending) = &flow.value.max_pending {
                    problems.push(format!(
                        "{}: trigger {:?}: flowControl.maxPending bounds workflows waiting on a semaphore; it only applies to workflow triggers (argoWorkflow, k8s Workflow)",
                        at(pending.pos),
                        t.name.value
                    ));
                }
            }
            if let Some(k) = &t.k8s {
                let kind = k.value.resource_kind();
                if kind == "Workflow" && crate::triggers::workflow::template_ref_of(t).is_none() {
                    problems.push(format!(
                        "{}: trigger {:?}: a k8s Workflow needs a resource written as a mapping with `spec.workflowTemplateRef` or `spec.templates`",
                        at(k.pos),
                        t.name.value
                    ));
                } else if kind != "ConfigMap" && kind != "Workflow" {
                    problems.push(format!(
                        "{}: trigger {:?}: k8s triggers of kind {kind:?} are not runnable (no Kubernetes API); \
                         the supported kinds are Workflow (local executor) and ConfigMap with `generateName: backlog-` (store for later)",
                        at(k.pos),
                        t.name.value
                    ));
                }
            }
        }
    }
    if config.bus.url.is_some() {
        for sensor in config
            .sensors
            .iter()
            .filter(|s| s.doc.spec.dependencies.len() > 1)
        {
            // Each instance pairs only the events it fetched (docs/conditions.md).
            tracing::warn!(
                "sensor {:?} waits for several dependencies on a shared JetStream bus: run one \
                 instance of it, or events whose partners another instance fetched expire after \
                 flowControl.correlation.maxWait",
                sensor.doc.metadata.name().to_string()
            );
        }
    }
    for source in &config.event_sources {
        if source.doc.spec.pubsub.is_some() {
            tracing::warn!(
                "EventSource {:?}: pubsub events are not run by spillway (accepted for validation only)",
                source.doc.metadata.name().to_string()
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RunError::Config(problems.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_bus::segment::SyncPolicy;

    /// `sync_interval` reaches the segment log: `always` syncs per publish,
    /// `never` not at all.
    #[tokio::test]
    async fn the_embedded_bus_syncs_as_the_eventbus_says() {
        for (sync, synced) in [(SyncPolicy::Always, true), (SyncPolicy::Never, false)] {
            let dir = tempfile::tempdir().unwrap();
            let (bus, _lock) =
                open_embedded_bus(dir.path(), spillway_bus::Limits::default(), sync).unwrap();
            let before = bus.log_stats().syncs;
            bus.publish(spillway_bus::Message {
                subject: "s".into(),
                headers: Vec::new(),
                payload: bytes::Bytes::from_static(b"x"),
            })
            .await
            .unwrap();
            assert_eq!(bus.log_stats().syncs > before, synced, "{sync:?}");
            bus.close().await;
        }
    }
}
