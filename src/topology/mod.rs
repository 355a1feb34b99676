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
//! Config that validates but cannot run yet is refused here with a message
//! that names the field ([`RunError::Config`]), never silently ignored.

use crate::api::AdminState;
use crate::config::eventsource::WebhookFlowControl;
use crate::config::sensor::Sensor;
use crate::config::{Config, Located};
use crate::event::Event;
use crate::sensor::{DependencyMatcher, RetryPolicy, TriggerLimits, TriggerRunner};
use crate::sources::webhook::{self, Endpoint, PortState};
use crate::sources::SourceContext;
use crate::telemetry::Metrics;
use crate::triggers::{http::HttpTrigger, log::LogTrigger, Trigger};
use spillway_bus::jetstream::JetStreamBus;
use spillway_bus::segment_bus::{SegmentBus, SegmentBusOptions};
use spillway_bus::{Bus, ConsumerConfig};
use spillway_flowctl::{
    AdaptiveConcurrency, Algorithm, ConcurrencyMode, GradualDrain, PriorityShedder, RateLimiter,
    SheddingPolicy,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A trigger's credit window without `flowControl.maxInFlight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// Options from the command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the embedded durable bus keeps its log and consumer state
    /// (unused with a JetStream `url`).
    pub data_dir: PathBuf,
    pub admin: SocketAddr,
    /// How long in-flight triggers may take to finish on shutdown.
    pub grace: Duration,
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

    let limits = config.bus.limits;
    // The lock is held until the pipeline stops: one process per data directory.
    let (bus, _data_dir_lock, backend): (Arc<dyn Bus>, Option<std::fs::File>, String) =
        match &config.bus.url {
            Some(url) => {
                let bus =
                    JetStreamBus::connect(url, &config.bus.name, limits, &[] as &[&str]).await?;
                let backend = format!("NATS JetStream at {url}, stream {:?}", bus.stream_name());
                (bus, None, backend)
            }
            None => {
                let dir = options.data_dir.clone();
                let (bus, lock) =
                    tokio::task::spawn_blocking(move || open_embedded_bus(&dir, limits))
                        .await
                        .map_err(|e| {
                            RunError::Config(format!("opening the embedded bus: {e}"))
                        })??;
                let backend = format!("embedded and durable in {}", options.data_dir.display());
                (bus, Some(lock), backend)
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
    let metrics = Arc::new(Metrics::new());
    let draining = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));

    let http_client = reqwest::Client::builder()
        .build()
        .map_err(|e| RunError::Config(format!("cannot build the HTTP client: {e}")))?;
    let mut runners = Vec::new();
    for sensor in &config.sensors {
        runners.extend(build_runners(sensor, &bus, &http_client, &metrics).await?);
    }
    let handles: Vec<_> = runners.iter().map(TriggerRunner::handle).collect();

    // Bind every port before serving anything, so a taken port fails start-up cleanly.
    let mut servers = Vec::new();
    let admin_listener = bind(options.admin).await?;
    let admin_state = Arc::new(AdminState {
        stream: config.bus.name.clone(),
        backend: "memory",
        bus: Arc::clone(&bus),
        triggers: handles,
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
        draining: Arc::clone(&draining),
    });
    let server_stop = CancellationToken::new();
    let mut webhook_listeners = Vec::new();
    for (port, endpoints) in webhook_endpoints(&config) {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let listener = bind(addr).await?;
        tracing::info!(
            "webhook listening on {addr}: {}",
            endpoints
                .iter()
                .map(|e| format!("{} {} → {}.{}", e.method, e.path, e.source, e.event))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let state = Arc::new(PortState {
            endpoints,
            bus: Arc::clone(&bus),
            metrics: Arc::clone(&metrics),
            draining: Arc::clone(&draining),
        });
        webhook_listeners.push((listener, webhook::router(state)));
    }
    tracing::info!(
        "admin server on http://{}",
        admin_listener.local_addr().unwrap_or(options.admin)
    );
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
    for (listener, router) in webhook_listeners {
        servers.push(serve(listener, router, server_stop.clone()));
    }
    ready.store(true, Ordering::Release);
    tracing::info!("ready");

    shutdown.cancelled().await;
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

/// Webhook endpoints grouped by port.
fn webhook_endpoints(config: &Config) -> BTreeMap<u16, Vec<Endpoint>> {
    let mut ports: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
    let bus_max = config.bus.limits.max_msg_size.unwrap_or(u64::MAX);
    for source in &config.event_sources {
        let source_name = source.doc.metadata.name().to_string();
        for (event, hook) in source.doc.spec.webhook.iter().flat_map(|w| w.iter()) {
            // Validation guarantees a valid port and method.
            let Ok(port) = hook.port.value.trim().parse::<u16>() else {
                continue;
            };
            let method = hook
                .method
                .as_ref()
                .and_then(|m| {
                    axum::http::Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()).ok()
                })
                .unwrap_or(axum::http::Method::POST);
            let flow = hook.flow_control.as_ref();
            let max_payload = hook
                .max_payload_size
                .as_ref()
                .map_or(webhook::DEFAULT_MAX_PAYLOAD, |s| s.value.0)
                .min(bus_max);
            ports.entry(port).or_default().push(Endpoint {
                source: source_name.clone(),
                event: event.value.clone(),
                path: hook.endpoint.value.clone(),
                method,
                max_payload,
                max_block: flow
                    .and_then(|f| f.max_block.as_ref())
                    .map_or(Duration::ZERO, |d| d.value.0),
                metadata: hook.metadata.clone().unwrap_or_default(),
                rate_limit: flow
                    .and_then(|f| f.rate_limit.as_ref())
                    .and_then(|r| r.value.to_flowctl())
                    .map(|limit| Arc::new(RateLimiter::new(limit))),
                shedding: flow.and_then(shedding),
            });
        }
    }
    ports
}

/// Opens (recovering) the segment-log bus in `dir`, after taking the
/// directory's lock so a second process cannot corrupt it.
fn open_embedded_bus(
    dir: &std::path::Path,
    limits: spillway_bus::Limits,
) -> Result<(Arc<dyn Bus>, std::fs::File), RunError> {
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
    let (bus, report) = SegmentBus::open(dir, limits, SegmentBusOptions::default())?;
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

/// The endpoint's priority shedding, if `flowControl.shedding` is set.
/// Validation has checked the values, so a policy error cannot happen here.
fn shedding(flow: &WebhookFlowControl) -> Option<Arc<webhook::Shedding>> {
    let rule = &flow.shedding.as_ref()?.value;
    let policy = SheddingPolicy::single(
        rule.queue_depth_above.value,
        i64::from(rule.shed_priority_above.value),
    )
    .ok()?;
    let priority = flow.priority.as_ref().map(|p| &p.value);
    Some(Arc::new(webhook::Shedding {
        header: priority
            .and_then(|p| axum::http::HeaderName::try_from(p.header.value.as_str()).ok()),
        default_priority: priority
            .and_then(|p| p.default.as_ref())
            .map_or(webhook::DEFAULT_PRIORITY, |d| {
                webhook::priority_from(u64::from(d.value))
            }),
        shedder: PriorityShedder::new(policy),
    }))
}

/// One runner per trigger, each with its own durable consumer.
async fn build_runners(
    sensor: &Located<Sensor>,
    bus: &Arc<dyn Bus>,
    http_client: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> Result<Vec<TriggerRunner>, RunError> {
    let sensor_name = sensor.doc.metadata.name().to_string();
    let dependencies: Vec<DependencyMatcher> = sensor
        .doc
        .spec
        .dependencies
        .iter()
        .map(|d| DependencyMatcher {
            name: d.name.value.clone(),
            subject: Event::subject_for(&d.event_source_name.value, &d.event_name.value),
            filters: d.filters.clone(),
        })
        .collect();
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
    let mut runners = Vec::new();
    for trigger in &spec.triggers {
        let name = trigger.template.name.value.clone();
        let Some(action) = build_trigger(&sensor_name, trigger, http_client)? else {
            // refuse_unsupported() already rejected every other kind.
            continue;
        };
        let dlq = match &trigger.dlq_trigger {
            Some(dlq) => build_trigger(&sensor_name, &dlq.value, http_client)?,
            None => None,
        };
        let retry = trigger
            .retry_strategy
            .as_ref()
            .map(|r| RetryPolicy::from(&r.value))
            .unwrap_or_default();
        let flow = trigger.flow_control.as_ref().map(|f| &f.value);
        let max_in_flight = flow
            .and_then(|f| f.max_in_flight.as_ref())
            .map_or(DEFAULT_MAX_IN_FLIGHT, |m| m.value as usize);
        let burst = flow.and_then(|f| f.burst.as_ref()).map(|b| b.value);
        let rate = trigger
            .rate_limit
            .as_ref()
            .and_then(|r| r.value.to_flowctl(burst))
            .map(RateLimiter::new);
        // Adaptive by default where there is a downstream to listen to.
        let mode = flow.and_then(|f| f.concurrency.as_ref()).map_or(
            if matches!(action, Trigger::Http(_)) {
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
        let mut consumer_config = ConsumerConfig::new(format!("{sensor_name}-{name}"));
        consumer_config.filter_subjects = dependencies.iter().map(|d| d.subject.clone()).collect();
        consumer_config.max_ack_pending = max_in_flight;
        // An invocation must not be redelivered while it is still running.
        consumer_config.ack_wait = action.max_duration() + Duration::from_secs(30);
        let ack_wait = consumer_config.ack_wait;
        let consumer = bus.consumer(consumer_config).await?;
        runners.push(TriggerRunner::new(
            &sensor_name,
            &name,
            dependencies.clone(),
            action,
            dlq,
            consumer,
            TriggerLimits {
                max_in_flight,
                concurrency,
                retry,
                rate,
                sensor_rate: sensor_rate.clone(),
                slow_start,
                ack_wait,
                at_least_once: trigger.at_least_once.as_ref().is_none_or(|f| f.value),
            },
            Arc::clone(metrics),
        ));
    }
    Ok(runners)
}

/// The runnable trigger of `trigger`'s template; `None` for kinds this
/// build cannot run (refused earlier by [`refuse_unsupported`]).
fn build_trigger(
    sensor: &str,
    trigger: &crate::config::sensor::Trigger,
    http_client: &reqwest::Client,
) -> Result<Option<Trigger>, RunError> {
    let name = &trigger.template.name.value;
    if let Some(http) = &trigger.template.http {
        let allowed = trigger
            .policy
            .as_ref()
            .and_then(|p| p.value.status.as_ref())
            .map(|s| s.allow.iter().map(|code| code.value).collect());
        let http = HttpTrigger::new(http_client.clone(), &http.value, allowed)
            .map_err(|e| RunError::Config(format!("sensor {sensor}, trigger {name}: {e}")))?;
        return Ok(Some(Trigger::Http(http)));
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
        let name = sensor.doc.metadata.name().to_string();
        let at = |pos: crate::config::yaml::Pos| format!("{}:{}", sensor.file.display(), pos);
        if sensor.doc.spec.dependencies.len() > 1 {
            problems.push(format!(
                "{}: sensor {name:?} has {} dependencies; combining dependencies (Argo's default: all must arrive) is not supported yet — use one sensor per dependency",
                at(sensor.doc.spec.dependencies[1].name.pos),
                sensor.doc.spec.dependencies.len()
            ));
        }
        if let Some(flow) = &sensor.doc.spec.flow_control {
            if let Some(shedding) = &flow.value.shedding {
                problems.push(format!(
                    "{}: sensor {name:?}: flowControl.shedding is not supported by this build yet; refusing to run rather than ignore it",
                    at(shedding.pos)
                ));
            }
        }
        for trigger in &sensor.doc.spec.triggers {
            let t = &trigger.template;
            if let Some(flow) = &trigger.flow_control {
                let flow = &flow.value;
                let not_yet = [
                    ("onReject", flow.on_reject.as_ref().map(|o| o.pos)),
                    ("maxPending", flow.max_pending.as_ref().map(|m| m.pos)),
                    ("autoscale", flow.autoscale.as_ref().map(|a| a.pos)),
                ];
                for (field, pos) in not_yet {
                    if let Some(pos) = pos {
                        problems.push(format!(
                            "{}: trigger {:?}: flowControl.{field} is not supported by this build yet; refusing to run rather than ignore it",
                            at(pos),
                            t.name.value
                        ));
                    }
                }
            }
            if let Some(dlq) = &trigger.dlq_trigger {
                let d = &dlq.value.template;
                if d.http.is_none() && d.log.is_none() {
                    problems.push(format!(
                        "{}: trigger {:?}: its dlqTrigger {:?} must be an http or log trigger in this build",
                        at(d.name.pos),
                        t.name.value,
                        d.name.value
                    ));
                }
            }
            if let Some(w) = &t.argo_workflow {
                problems.push(format!(
                    "{}: trigger {:?}: argoWorkflow triggers need the local workflow executor, which is not available yet",
                    at(w.pos),
                    t.name.value
                ));
            }
            if let Some(k) = &t.k8s {
                problems.push(format!(
                    "{}: trigger {:?}: k8s triggers are not runnable yet",
                    at(k.pos),
                    t.name.value
                ));
            }
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
