//! The `spillway` command line. Parses arguments, sets up logging, and turns
//! errors into exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "cli/backlog.rs"]
mod backlog;

#[derive(Parser)]
#[command(
    name = "spillway",
    version,
    about = "An event pipeline that stays up under an event storm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: event sources, bus, sensors, triggers.
    Run {
        /// Config files (multi-document YAML, Argo Events kinds).
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Directory of the embedded durable bus (segment log and consumer
        /// state). One spillway process per directory.
        #[arg(long, default_value = "spillway-data")]
        data_dir: PathBuf,
        /// Admin server address: /metrics, /healthz, /readyz, /api/v1/status.
        #[arg(long, default_value = "127.0.0.1:9470")]
        admin: SocketAddr,
        /// How long to let in-flight triggers finish on SIGTERM/SIGINT.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Secrets named in the config (`authSecret: {name, key}` …) are read
        /// from DIR/<name>/<key>, laid out like a mounted Kubernetes Secret,
        /// unless the variable SPILLWAY_SECRET_<NAME>_<KEY> is set.
        #[arg(
            long,
            value_name = "DIR",
            env = "SPILLWAY_SECRETS_DIR",
            default_value = "secrets"
        )]
        secrets_dir: PathBuf,
        /// Most events the backlog store (<data-dir>/backlog/) holds; when
        /// full, storing fails and the event stays on the bus.
        #[arg(long, default_value_t = 100_000)]
        backlog_max_events: u64,
        /// Most bytes the backlog store holds (e.g. 1GiB, 500MB).
        #[arg(long, default_value = "1GiB", value_parser = parse_byte_size)]
        backlog_max_bytes: u64,
        /// Delete the embedded bus's durable consumers that no trigger of
        /// these files uses (sensors removed for good), releasing the
        /// events they hold. Without it they are only listed in a warning.
        #[arg(long)]
        prune_consumers: bool,
    },
    /// Events stored for later (onReject: backlog, k8s ConfigMap backlog- triggers).
    Backlog {
        #[command(subcommand)]
        command: BacklogCommand,
    },
    /// Check config files; print FILE:LINE:COL errors; exit 2 on any error.
    Validate {
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// One screen of a running instance: depth, lag, rates, limits, alerts.
    Status {
        /// Admin server of the running instance.
        #[arg(long, default_value = "http://127.0.0.1:9470")]
        admin: String,
        /// Redraw every --interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// Time between the two readings rates are computed from.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: std::time::Duration,
    },
    /// The built-in alert rules.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// A Grafana dashboard over spillway's metrics.
    Dashboard {
        #[command(subcommand)]
        command: DashboardCommand,
    },
    /// Load-test a webhook (or any HTTP endpoint) and write a report:
    /// report.md, report.json and SVG charts of rate, latency and, with
    /// --admin, queue depth, lag and memory over time.
    Storm(Box<StormArgs>),
    /// The midnight spike, narrated, in about two minutes: starts a
    /// pipeline in-process with a built-in slow downstream, prints the
    /// dashboard URL, drives a spike at it and tells what happens (bus
    /// fills, 429s with Retry-After, shedding, drain), then sums up.
    /// Ctrl-C stops it cleanly (exit 130). Exit 1 if a check failed.
    Demo(DemoArgs),
    /// The built-in slow downstream of the scenarios, on its own: answers
    /// every POST with 200 after --latency, and on Ctrl-C prints how many
    /// storm ids it received (for running examples/scenarios/*.yaml by hand).
    Downstream {
        #[arg(long, default_value = "127.0.0.1:12001")]
        listen: SocketAddr,
        #[arg(long, default_value = "5ms", value_parser = parse_duration)]
        latency: std::time::Duration,
    },
    /// Send events to a webhook (or any HTTP endpoint), as fast as it
    /// accepts them: a 429/503 is waited out (Retry-After) and the same
    /// event sent again; the input is read only as events are accepted.
    /// Exits 1 if any event was given up.
    Publish(PublishArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Admin server (and dashboard) address [default: a free port on
    /// 127.0.0.1].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Directory for the storm report and scenario.md.
    #[arg(long, default_value = "demo-report")]
    out: PathBuf,
    /// Do not try to open the dashboard in a browser (it is only tried
    /// when DISPLAY or WAYLAND_DISPLAY is set).
    #[arg(long)]
    no_open: bool,
}

#[derive(clap::Args)]
struct PublishArgs {
    /// Where to POST each event, e.g. http://127.0.0.1:12000/orders.
    url: String,
    /// An event body (repeatable). Without --data, events are the lines of
    /// --file, or of stdin.
    #[arg(short = 'd', long = "data", conflicts_with = "file")]
    data: Vec<String>,
    /// One event per line (blank lines skipped); `-` for stdin.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// A header sent with every event, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Events in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Give an event up when it has not been accepted this long after its
    /// first attempt.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    max_wait: std::time::Duration,
    /// Time limit of each attempt.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Longest line accepted as an event (e.g. 1MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_byte_size)]
    max_line: u64,
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Print the alert rules as a Prometheus rule file (YAML).
    Export {
        /// Config files whose AlertRules document tunes the rules (the
        /// built-in defaults without one).
        #[arg(short = 'f', long = "file", num_args = 1..)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DashboardCommand {
    /// Print the Grafana dashboard JSON.
    Export,
}

#[derive(Subcommand)]
enum BacklogCommand {
    /// Counts, ages and bytes of the stored events, per trigger; damaged
    /// records are named. Reads the store directly (pipeline running or not).
    List {
        #[arg(long, default_value = "spillway-data")]
        data_dir: PathBuf,
    },
    /// Puts the stored events back on the bus through the running pipeline
    /// (`spillway run` owns the bus and the store), oldest first, starting
    /// at --rate events/s and growing ×1.1 per second up to --max-rate.
    /// Each event is removed once the bus accepted it: interrupt at any time
    /// and run again to resume.
    Replay {
        /// Admin address of the running `spillway run`.
        #[arg(long, default_value = "http://127.0.0.1:9470")]
        admin: String,
        /// Events per second at the start of the ramp.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Events per second the ramp stops at.
        #[arg(long, default_value_t = 1000.0)]
        max_rate: f64,
    },
}

#[derive(clap::Args)]
struct StormArgs {
    /// Endpoint to POST JSON events to, e.g. http://127.0.0.1:12000/orders.
    /// Each body is {"id":"storm-<n>",…}; a retry resends the same id.
    #[arg(long, required_unless_present_any = ["scenario", "list_scenarios"])]
    url: Option<String>,
    /// Run a built-in scenario instead (see --list-scenarios): starts its
    /// pipeline in-process with a built-in downstream, runs its storm,
    /// waits for the drain, and writes scenario.md (a PASS/FAIL per check)
    /// next to the report. Exit 1 if a check fails, 130 on Ctrl-C. Only
    /// --out and --admin (the address to serve the admin API on) apply.
    #[arg(long, value_name = "NAME", conflicts_with_all = [
        "url", "mode", "profile", "rate", "from", "to", "ramp_for", "base", "peak",
        "base_for", "peak_for", "duration", "concurrency", "max_outstanding",
        "payload_bytes", "priorities", "priority_header", "honor_retry_after", "max_retries", "timeout",
    ])]
    scenario: Option<String>,
    /// List the built-in scenarios.
    #[arg(long)]
    list_scenarios: bool,
    /// Shrink a scenario for a quick check: durations times this
    /// (0 < S <= 1).
    #[arg(long, hide = true, default_value_t = 1.0, requires = "scenario")]
    scenario_scale: f64,
    /// … the bus size and the shedding threshold times this.
    #[arg(long, hide = true, default_value_t = 1.0, requires = "scenario")]
    scenario_bus_scale: f64,
    /// … the storm's rates and the trigger's rateLimit times this.
    #[arg(long, hide = true, default_value_t = 1.0, requires = "scenario")]
    scenario_rate_scale: f64,
    /// Admin server of the spillway under test, e.g. http://127.0.0.1:9470:
    /// bus depth, consumer lag and memory are sampled once a second.
    #[arg(long)]
    admin: Option<String>,
    /// open: requests start on schedule whatever the answers (overload is
    /// real); closed: --concurrency workers, each sends its next request
    /// after the previous answer.
    #[arg(long, value_enum, default_value = "open")]
    mode: StormMode,
    /// Rate profile of the open loop: constant (--rate), ramp (--from to
    /// --to over --ramp-for), spike (--base for --base-for, --peak for
    /// --peak-for, --base again).
    #[arg(long, value_enum, default_value = "constant")]
    profile: StormProfile,
    /// Requests per second of the constant profile [default: 100].
    #[arg(long)]
    rate: Option<f64>,
    /// Ramp: requests per second at the start.
    #[arg(long, default_value_t = 0.0)]
    from: f64,
    /// Ramp: requests per second at the end (and after it).
    #[arg(long, required_if_eq("profile", "ramp"))]
    to: Option<f64>,
    /// Ramp: how long the ramp lasts [default: --duration].
    #[arg(long, value_parser = parse_duration)]
    ramp_for: Option<std::time::Duration>,
    /// Spike: requests per second before and after the peak.
    #[arg(long, required_if_eq("profile", "spike"))]
    base: Option<f64>,
    /// Spike: requests per second during the peak.
    #[arg(long, required_if_eq("profile", "spike"))]
    peak: Option<f64>,
    /// Spike: how long the base rate lasts before the peak (and after it).
    #[arg(long, value_parser = parse_duration, required_if_eq("profile", "spike"))]
    base_for: Option<std::time::Duration>,
    /// Spike: how long the peak lasts.
    #[arg(long, value_parser = parse_duration, required_if_eq("profile", "spike"))]
    peak_for: Option<std::time::Duration>,
    /// How long to send [default: the profile's length (spike: base-for +
    /// peak-for + base-for; ramp: ramp-for), else 10s].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Closed loop: number of workers.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Open loop: most requests outstanding (in flight or waiting to
    /// retry). An arrival due while that many are outstanding is not sent
    /// and is counted as dropped_by_generator.
    #[arg(long, default_value_t = 1000)]
    max_outstanding: usize,
    /// Size of each JSON body (padded), e.g. 256, 4KiB.
    #[arg(long, default_value = "256", value_parser = parse_byte_size)]
    payload_bytes: u64,
    /// Priority mix PRIORITY:WEIGHT,… sent in --priority-header, e.g.
    /// 0:10,5:90 (priority 0 is the most critical). No header without it.
    #[arg(long, value_parser = parse_priorities)]
    priorities: Option<spillway::storm::priority_mix::PriorityMix>,
    /// Header carrying the priority (the webhook's
    /// flowControl.priority.header).
    #[arg(long, default_value = "X-Priority")]
    priority_header: String,
    /// Resend an event answered 429 (or 5xx) with Retry-After once that
    /// has passed, if still inside the run; retries are extra load,
    /// counted apart.
    #[arg(long)]
    honor_retry_after: bool,
    /// With --honor-retry-after: give an event up after this many retries
    /// [default: retry until the run ends].
    #[arg(long, requires = "honor_retry_after")]
    max_retries: Option<u32>,
    /// Timeout of each request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Directory for the report (created; its report files are replaced).
    #[arg(long, default_value = "storm-report")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StormMode {
    Open,
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StormProfile {
    Constant,
    Ramp,
    Spike,
}

fn parse_priorities(text: &str) -> Result<spillway::storm::priority_mix::PriorityMix, String> {
    spillway::storm::priority_mix::PriorityMix::parse(text).map_err(|e| e.to_string())
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    spillway::config::values::parse_duration(text)
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    spillway::config::values::parse_byte_size(text)
}

/// The async runtime of a command; `None` (after saying why) when it
/// cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            None
        }
    }
}

fn publish(args: PublishArgs) -> ExitCode {
    use spillway::publish::{self, Delivery, HttpPoster, Input, LineInput, PublishOptions};
    let poster = match HttpPoster::new(&args.url, &args.headers, args.timeout) {
        Ok(poster) => std::sync::Arc::new(poster),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let options = PublishOptions {
        concurrency: args.concurrency as usize,
        max_wait: args.max_wait,
        max_line_bytes: usize::try_from(args.max_line).unwrap_or(usize::MAX),
    };
    let from_arguments = !args.data.is_empty();
    let result = runtime.block_on(async {
        let reader: Box<dyn tokio::io::AsyncBufRead + Unpin + Send> = match &args.file {
            Some(path) if path.as_os_str() != "-" => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Box::new(tokio::io::BufReader::new(file))
            }
            _ => Box::new(tokio::io::BufReader::new(tokio::io::stdin())),
        };
        let input = if from_arguments {
            Input::data(args.data)
        } else {
            Input::Lines(LineInput::new(reader, options.max_line_bytes))
        };
        let source = match &args.file {
            Some(path) if path.as_os_str() != "-" => path.display().to_string(),
            _ if from_arguments => "--data".to_string(),
            _ => "stdin".to_string(),
        };
        let summary = publish::publish(poster, input, options, |delivery| match delivery {
            // One answer per event given as an argument; a file's events
            // are summed up at the end instead.
            Delivery::Accepted { body, .. } if from_arguments => println!("{body}"),
            Delivery::Accepted { .. } => {}
            Delivery::GaveUp { line, reason } => eprintln!("{source}:{line}: {reason}"),
        })
        .await;
        anyhow::Ok(summary)
    });
    match result {
        Ok(summary) => {
            eprintln!(
                "published: {} accepted ({} resent after a refusal or no answer), {} given up",
                summary.accepted, summary.resent, summary.failed
            );
            if let Some(err) = &summary.input_error {
                eprintln!("error: reading stopped early: {err}");
            }
            if summary.failed == 0 && summary.input_error.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Run {
            files,
            data_dir,
            admin,
            grace,
            secrets_dir,
            backlog_max_events,
            backlog_max_bytes,
            prune_consumers,
        } => run(
            files.clone(),
            spillway::topology::RunOptions {
                data_dir,
                admin,
                grace,
                secrets_dir,
                files,
                backlog: spillway::backlog::BacklogLimits {
                    max_events: backlog_max_events,
                    max_bytes: backlog_max_bytes,
                },
                prune_consumers,
            },
        ),
        Command::Backlog {
            command: BacklogCommand::List { data_dir },
        } => backlog::list(&data_dir),
        Command::Backlog {
            command:
                BacklogCommand::Replay {
                    admin,
                    rate,
                    max_rate,
                },
        } => backlog::replay(&admin, rate, max_rate),
        Command::Storm(args) if args.list_scenarios => {
            for s in spillway::scenario::SCENARIOS {
                println!(
                    "{:<16} {}\n{:<16} pipeline: {}",
                    s.name, s.summary, "", s.file
                );
            }
            ExitCode::SUCCESS
        }
        Command::Storm(args) if args.scenario.is_some() => storm_scenario(*args),
        Command::Storm(args) => storm(*args),
        Command::Demo(args) => demo(args),
        Command::Downstream { listen, latency } => downstream(listen, latency),
        Command::Publish(args) => publish(args),
        Command::Status {
            admin,
            watch,
            interval,
        } => status(&admin, watch, interval),
        Command::Alerts {
            command: AlertsCommand::Export { files },
        } => alerts_export(&files),
        Command::Dashboard {
            command: DashboardCommand::Export,
        } => {
            let dashboard = spillway::telemetry::dashboard::grafana();
            match serde_json::to_string_pretty(&dashboard) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: cannot write the dashboard: {err}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn alerts_export(files: &[PathBuf]) -> ExitCode {
    let rules = if files.is_empty() {
        spillway::telemetry::alerts::RuleSet::default()
    } else {
        match load(files) {
            Some(config) => config.alerting.rules,
            None => return ExitCode::from(2),
        }
    };
    match spillway::telemetry::alerts::export::RuleFile::from_rules(&rules).to_yaml() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

fn status(admin: &str, watch: bool, interval: std::time::Duration) -> ExitCode {
    let base = if admin.contains("://") {
        admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", admin.trim_end_matches('/'))
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    let result = runtime.block_on(async {
        spillway::install_tls_provider();
        let client = reqwest::Client::new();
        let url = format!("{base}/api/v1/status");
        let fetch = || async {
            let response = client
                .get(&url)
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await
                .with_context(|| {
                    format!("cannot reach the spillway admin server at {base} (is `spillway run` running? see --admin)")
                })?
                .error_for_status()
                .with_context(|| format!("{url} answered with an error"))?;
            response
                .json::<spillway::api::status::Status>()
                .await
                .with_context(|| format!("{url} did not answer a status document"))
        };
        let mut previous = (fetch().await?, std::time::Instant::now());
        loop {
            tokio::time::sleep(interval).await;
            let now = (fetch().await?, std::time::Instant::now());
            let elapsed = now.1.duration_since(previous.1);
            let screen = spillway::api::screen::render(&base, &now.0, Some((&previous.0, elapsed)));
            if watch {
                // Clear the terminal and redraw from the top.
                print!("\x1b[2J\x1b[H{screen}");
            } else {
                print!("{screen}");
                return Ok::<(), anyhow::Error>(());
            }
            previous = now;
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config, printing every diagnostic; `None` after errors.
fn load(files: &[PathBuf]) -> Option<spillway::config::Config> {
    match spillway::config::load(files) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("{warning}");
            }
            Some(config)
        }
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            let errors = diagnostics
                .iter()
                .filter(|d| d.severity == spillway::config::Severity::Error)
                .count();
            eprintln!("{errors} error(s)");
            None
        }
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    match load(files) {
        Some(config) => {
            println!("{}", config.summary());
            ExitCode::SUCCESS
        }
        None => ExitCode::from(2),
    }
}

/// Open files `spillway run` asks for: segment files of the embedded bus
/// (one per 64 MiB retained) and webhook connections.
const RUN_OPEN_FILES: u64 = 65_536;

fn run(files: Vec<PathBuf>, options: spillway::topology::RunOptions) -> ExitCode {
    let Some(config) = load(&files) else {
        return ExitCode::from(2);
    };
    spillway::open_files::raise_limit(RUN_OPEN_FILES);
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    match runtime.block_on(spillway::topology::run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            match err {
                spillway::topology::RunError::Config(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// Turns the storm flags into a config; `Err` is a usage error.
fn storm_config(args: StormArgs) -> anyhow::Result<spillway::storm::StormConfig> {
    use spillway::storm::profile::Profile;
    use spillway::storm::Mode;
    if args.mode == StormMode::Closed
        && (args.profile != StormProfile::Constant || args.rate.is_some())
    {
        anyhow::bail!("--mode closed sends as fast as its workers get answers: --rate and --profile apply to --mode open");
    }
    if args.profile != StormProfile::Constant && args.rate.is_some() {
        anyhow::bail!(
            "--rate applies to --profile constant; ramp uses --from/--to, spike --base/--peak"
        );
    }
    let profile = match args.profile {
        StormProfile::Constant => Profile::constant(args.rate.unwrap_or(100.0))?,
        StormProfile::Ramp => {
            let over = args
                .ramp_for
                .or(args.duration)
                .ok_or_else(|| anyhow::anyhow!("--profile ramp needs --ramp-for or --duration"))?;
            // `required_if_eq` makes clap refuse a ramp without --to.
            Profile::ramp(args.from, args.to.unwrap_or_default(), over)?
        }
        // `required_if_eq` makes clap refuse a spike without these.
        StormProfile::Spike => Profile::spike(
            args.base.unwrap_or_default(),
            args.peak.unwrap_or_default(),
            args.base_for.unwrap_or_default(),
            args.peak_for.unwrap_or_default(),
        )?,
    };
    let duration = args
        .duration
        .or_else(|| profile.natural_duration())
        .unwrap_or(std::time::Duration::from_secs(10));
    let mode = match args.mode {
        StormMode::Open => Mode::Open {
            profile,
            max_outstanding: args.max_outstanding,
        },
        StormMode::Closed => Mode::Closed {
            workers: args.concurrency,
        },
    };
    Ok(spillway::storm::StormConfig {
        // clap requires --url unless --scenario or --list-scenarios.
        url: args.url.unwrap_or_default(),
        admin: args.admin,
        mode,
        duration,
        payload_bytes: usize::try_from(args.payload_bytes)?,
        priorities: args.priorities,
        priority_header: args.priority_header,
        honor_retry_after: args.honor_retry_after,
        max_retries: args.max_retries.unwrap_or(u32::MAX),
        timeout: args.timeout,
        out: args.out,
        progress: true,
        tracker: None,
    })
}

fn storm(args: StormArgs) -> ExitCode {
    let config = match storm_config(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    match runtime.block_on(spillway::storm::run(config)) {
        Ok(finished) => {
            let t = &finished.report.totals;
            println!(
                "storm: {} sent (+{} retries), {} accepted, {} × 429 (bus_full {}, rate_limited {}, shed {}, other {}), {} × 5xx, {} other 4xx, {} without answer, {} dropped by the generator; latency p50 {:.1} ms, p99 {:.1} ms",
                t.sent,
                t.retries,
                t.accepted,
                t.rejected(),
                t.rejected_bus_full,
                t.rejected_rate_limited,
                t.rejected_shed,
                t.rejected_other,
                t.server_errors,
                t.client_errors,
                t.errors,
                t.dropped_by_generator,
                t.latency.p50_us as f64 / 1000.0,
                t.latency.p99_us as f64 / 1000.0,
            );
            if let Some(report) = finished.files.first() {
                println!("report: {}", report.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            use spillway::storm::{target::TargetError, StormError};
            match err {
                StormError::Target(TargetError::Client(_)) => ExitCode::from(1),
                StormError::Invalid(_) | StormError::Target(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// The command line as typed, for reports.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("spillway {}", args.join(" "))
}

/// A token cancelled on Ctrl-C (SIGINT).
fn interrupt_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the storm and shutting the pipeline down");
            cancel.cancel();
        }
    });
    token
}

/// Runs `scenario` and turns the outcome into an exit code: 0 every check
/// passed, 1 one failed or the run broke, 2 a config/usage error, 130
/// interrupted.
fn run_scenario(
    scenario: &spillway::scenario::Scenario,
    settings: spillway::scenario::runner::Settings,
    summary: fn(&spillway::scenario::runner::Finished),
) -> ExitCode {
    use spillway::scenario::runner::{self, RunnerError};
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    let result = runtime.block_on(async {
        let cancel = interrupt_token();
        runner::run(scenario, settings, cancel).await
    });
    match result {
        Ok(finished) => {
            summary(&finished);
            if finished.facts.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(RunnerError::Interrupted) => {
            eprintln!("interrupted: the pipeline was shut down");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("error: {err}");
            match err {
                RunnerError::Scenario(_) | RunnerError::Config(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn say_stdout() -> spillway::scenario::runner::Say {
    std::sync::Arc::new(|line: &str| println!("{line}"))
}

/// The admin flag of a scenario: an address, with or without `http://`.
fn admin_address(admin: Option<&str>) -> Result<Option<SocketAddr>, String> {
    admin
        .map(|a| {
            let a = a.trim_start_matches("http://").trim_end_matches('/');
            a.parse::<SocketAddr>()
                .map_err(|e| format!("--admin {a:?} is not an address such as 127.0.0.1:9470: {e}"))
        })
        .transpose()
}

fn print_checks(finished: &spillway::scenario::runner::Finished) {
    for check in finished.facts.checks() {
        println!(
            "{} {}: {}",
            if check.pass { "PASS" } else { "FAIL" },
            check.name,
            check.detail
        );
    }
    if let Some(report) = finished.storm.files.first() {
        println!("report: {}", report.display());
    }
    println!("scenario: {}", finished.scenario_md.display());
}

fn storm_scenario(args: StormArgs) -> ExitCode {
    use spillway::scenario::{self, runner::Settings, Scale};
    let name = args.scenario.unwrap_or_default();
    let scenario = match scenario::find(&name) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let admin = match admin_address(args.admin.as_deref()) {
        Ok(admin) => admin,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let settings = Settings {
        scale: Scale {
            time: args.scenario_scale,
            bus: args.scenario_bus_scale,
            rate: args.scenario_rate_scale,
        },
        admin,
        out: args.out,
        open_browser: false,
        command: command_line(),
        say: say_stdout(),
    };
    run_scenario(scenario, settings, print_checks)
}

/// The demo: the midnight spike at half length and half the bus.
fn demo(args: DemoArgs) -> ExitCode {
    use spillway::scenario::{runner::Settings, Scale, MIDNIGHT_SPIKE};
    println!("spillway demo: a 5x traffic spike into a pipeline whose downstream is slower than the peak. Ctrl-C stops it.");
    let settings = Settings {
        scale: Scale {
            time: 0.5,
            bus: 0.5,
            rate: 1.0,
        },
        admin: args.admin,
        out: args.out,
        open_browser: !args.no_open,
        command: command_line(),
        say: say_stdout(),
    };
    run_scenario(&MIDNIGHT_SPIKE, settings, |finished| {
        let f = &finished.facts;
        let t = &f.storm;
        println!();
        println!("summary:");
        println!(
            "  {} events accepted ({} sent, {} resent after Retry-After); 429s: {} bus_full, {} shed, {} rate_limited",
            f.accepted_ids, t.sent, t.retries, t.rejected_bus_full, t.rejected_shed, t.rejected_rate_limited
        );
        let reached = if f.lost == 0 {
            "every accepted id reached the downstream"
        } else {
            "accepted ids that never reached the downstream"
        };
        println!(
            "  lost: {} ({reached}; {} duplicate deliveries)",
            f.lost, f.duplicates
        );
        println!(
            "  priority 0 shed: {}; bus peak {}/{} events; max RSS {}",
            f.shed_by_priority.get(&0).copied().unwrap_or(0),
            f.peak_depth(),
            f.max_msgs,
            f.peak_rss().map_or_else(
                || "n/a".to_string(),
                |r| format!("{:.0} MiB", r as f64 / 1048576.0)
            )
        );
        let failed: Vec<_> = f.checks().into_iter().filter(|c| !c.pass).collect();
        if failed.is_empty() {
            println!("  every check passed");
        }
        for check in failed {
            println!("  FAIL {}: {}", check.name, check.detail);
        }
        println!("  report: {}", finished.scenario_md.display());
    })
}

fn downstream(listen: SocketAddr, latency: std::time::Duration) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    let result = runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let server = spillway::scenario::downstream::start(
            listen,
            latency,
            spillway::storm::tracker::MAX_TRACKED_IDS,
            stop.clone(),
        )
        .await?;
        eprintln!(
            "downstream listening on {} ({} ms per request); Ctrl-C to stop",
            server.url(),
            latency.as_millis()
        );
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
        let r = &server.received;
        eprintln!(
            "downstream: {} requests, {} distinct storm ids, {} duplicates, {} without a storm id",
            r.requests(),
            r.ids.len(),
            r.duplicates(),
            r.untracked()
        );
        std::io::Result::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: cannot listen on {listen}: {err}");
            ExitCode::from(1)
        }
    }
}
