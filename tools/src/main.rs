//! The `corelog` binary: broker, admin tools and hardware tooling in one executable.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
mod start;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "corelog", version, about = "A Kafka-compatible, thread-per-core event streaming broker")]
struct Cli {
    /// Log format: human (default) or json.
    #[arg(long, global = true, env = "CORELOG_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a broker.
    Start {
        /// Data directory [default: ./corelog-data]
        #[arg(long, env = "CORELOG_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Kafka listener address [default: 127.0.0.1:9092]
        #[arg(long, env = "CORELOG_LISTEN")]
        listen: Option<String>,
        /// Number of shards (one per core) [default: all cores]
        #[arg(long, env = "CORELOG_CORES")]
        cores: Option<usize>,
        /// TOML config file (flags and CORELOG_* variables override it)
        #[arg(long, env = "CORELOG_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Probe the machine, measure the data dir's device, check and apply kernel tuning.
    Hardware {
        #[command(subcommand)]
        command: corelog_hardware::cli::HardwareCommand,
    },
}

fn init_logging(format: LogFormat) {
    // glommio logs through `log`; the subscriber's `tracing-log` bridge picks it up.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORELOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(error) = result {
        eprintln!("corelog: cannot initialise logging: {error}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Start { data_dir, listen, cores, config } => {
            start::run(&config::Overrides { data_dir, listen, cores, config })
        }
        Command::Hardware { command } => corelog_hardware::cli::run(command),
    }
}
