//! The `spillway` command line. Parses arguments, sets up logging, and turns
//! errors into exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    },
    /// Check config files; print FILE:LINE:COL errors; exit 2 on any error.
    Validate {
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Load-test a webhook (or any HTTP endpoint) and write a report:
    /// report.md, report.json and SVG charts of rate, latency and, with
    /// --admin, queue depth, lag and memory over time.
    Storm(Box<StormArgs>),
}

#[derive(clap::Args)]
struct StormArgs {
    /// Endpoint to POST JSON events to, e.g. http://127.0.0.1:12000/orders.
    /// Each body is {"id":"storm-<n>",…}; a retry resends the same id.
    #[arg(long)]
    url: String,
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
    #[arg(long, default_value = "256", value_parser = parse_size)]
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

fn parse_size(text: &str) -> Result<u64, String> {
    spillway::config::values::parse_byte_size(text)
}

fn parse_priorities(text: &str) -> Result<spillway::storm::priority_mix::PriorityMix, String> {
    spillway::storm::priority_mix::PriorityMix::parse(text).map_err(|e| e.to_string())
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    spillway::config::values::parse_duration(text)
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
        } => run(files, data_dir, admin, grace),
        Command::Storm(args) => storm(*args),
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

fn run(
    files: Vec<PathBuf>,
    data_dir: PathBuf,
    admin: SocketAddr,
    grace: std::time::Duration,
) -> ExitCode {
    let Some(config) = load(&files) else {
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let options = spillway::topology::RunOptions {
        data_dir,
        admin,
        grace,
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
        url: args.url,
        admin: args.admin,
        mode,
        duration,
        payload_bytes: usize::try_from(args.payload_bytes)?,
        priorities: args.priorities,
        priority_header: args.priority_header,
        honor_retry_after: args.honor_retry_after,
        timeout: args.timeout,
        out: args.out,
        progress: true,
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
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
