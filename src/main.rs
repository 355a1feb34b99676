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

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    spillway::config::values::parse_duration(text)
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    spillway::config::values::parse_byte_size(text)
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
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

fn run(files: Vec<PathBuf>, options: spillway::topology::RunOptions) -> ExitCode {
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
