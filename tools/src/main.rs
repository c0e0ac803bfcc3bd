//! The `corelog` binary: broker, admin tools and hardware tooling in one executable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use config::LogFormat;

mod admin;
mod bench;
mod client;
mod cluster;
mod config;
mod group;
mod logging;
mod records_cli;
mod start;
mod topic;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "corelog", version, about = "A Kafka-compatible, thread-per-core event streaming broker")]
struct Cli {
    /// Log format: human (default) or json.
    #[arg(long, global = true, env = "CORELOG_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `info,corelog_net=debug` [default: info]
    #[arg(long, global = true, env = "CORELOG_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
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
        /// Admin HTTP API address (metrics, health), or `none` [default: 127.0.0.1:9644]
        #[arg(long, env = "CORELOG_ADMIN_LISTEN")]
        admin_listen: Option<String>,
    },
    /// Ask a running broker about itself (health).
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Create, list, describe, delete and change topics (any Kafka-compatible broker).
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
        #[command(flatten)]
        connect: topic::Connect,
    },
    /// List, describe (with lag), move and delete consumer groups.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
        #[command(flatten)]
        connect: topic::Connect,
    },
    /// Load generator: producers and consumers at a rate, with latency percentiles
    /// (any Kafka-compatible broker).
    Bench(bench::BenchArgs),
    /// Probe the machine, measure the data dir's device, check and apply kernel tuning.
    Hardware {
        #[command(subcommand)]
        command: corelog_hardware::cli::HardwareCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Start { data_dir, listen, cores, config, admin_listen } => start::run(&config::Overrides {
            data_dir,
            listen,
            cores,
            config,
            admin_listen,
            log_level: cli.log_level,
            log_format: cli.log_format,
        }),
        Command::Cluster { command } => cluster::run(command),
        Command::Topic { command, connect } => topic::run(command, connect),
        Command::Bench(args) => bench::run(args),
        Command::Group { command, connect } => {
            topic::run_with_client(connect, move |client| group::execute(client, command))
        }
        Command::Hardware { command } => {
            let level = cli.log_level.unwrap_or_else(|| config::DEFAULT_LOG_LEVEL.to_string());
            logging::init(cli.log_format.unwrap_or(LogFormat::Human), &level);
            corelog_hardware::cli::run(command)
        }
    }
}
