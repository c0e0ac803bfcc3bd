//! `corelog cluster …`: questions about a running broker. `health` asks its admin API;
//! `info` and `config` ask over the Kafka protocol (any Kafka-compatible broker).
//!
//! Exit codes of `health`: 0 ready; 1 answered but not ready (starting, stopping, or a shard
//! down); 2 usage; 3 the admin API did not answer. `info` and `config`: as `corelog topic`.

use std::process::ExitCode;

use clap::Subcommand;

/// Seconds an admin API request may take (a scrape waits up to 2 s for the shards).
const REQUEST_TIMEOUT_SECS: u64 = 10;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The brokers, the controller, the cluster id, how many topics and partitions.
    Info {
        #[command(flatten)]
        connect: crate::topic::Connect,
    },
    /// A broker's configs and where each value comes from.
    Config {
        /// The broker's node id [default: the controller].
        #[arg(long)]
        broker: Option<i32>,
        #[command(flatten)]
        connect: crate::topic::Connect,
    },
    /// Is the broker live and ready? Asks its admin API (`/v1/health`).
    Health {
        /// The broker's admin API address.
        #[arg(long, env = "CORELOG_ADMIN", default_value = "127.0.0.1:9644")]
        admin: String,
        /// table (default) or json.
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

pub fn run(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Health { admin, format } => health(&admin, format),
        ClusterCommand::Info { connect } => crate::topic::run_with_client(connect, crate::group::cluster_info),
        ClusterCommand::Config { broker, connect } => {
            crate::topic::run_with_client(connect, move |client| crate::group::cluster_config(client, broker))
        }
    }
}

fn health(admin: &str, format: OutputFormat) -> ExitCode {
    let url = format!("http://{admin}/v1/health");
    let response = match minreq::get(&url).with_timeout(REQUEST_TIMEOUT_SECS).send() {
        Ok(response) => response,
        Err(error) => {
            eprintln!(
                "corelog: the admin API at {admin} did not answer ({error}); is the broker running, and is --admin its admin_listen?"
            );
            return ExitCode::from(3);
        }
    };
    let body: serde_json::Value = match response.as_str().map(serde_json::from_str) {
        Ok(Ok(body)) => body,
        _ => {
            eprintln!("corelog: {url} answered {} with no health report", response.status_code);
            return ExitCode::from(3);
        }
    };
    let ready = body["ready"].as_bool() == Some(true);
    match format {
        OutputFormat::Json => println!("{body}"),
        OutputFormat::Table => print!("{}", health_table(&body)),
    }
    if ready { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn health_table(body: &serde_json::Value) -> String {
    let yes = |v: &serde_json::Value| if v.as_bool() == Some(true) { "yes" } else { "no" };
    let mut out = format!("LIVE   {}\nREADY  {}\n\nSHARD  STATE\n", yes(&body["live"]), yes(&body["ready"]));
    for shard in body["shards"].as_array().into_iter().flatten() {
        let state = shard["state"].as_str().unwrap_or("unknown");
        let id = shard["shard"].as_u64().map_or_else(|| "?".to_string(), |id| id.to_string());
        out.push_str(&format!("{id:<6} {state}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_table_lists_every_shard() {
        let body = serde_json::json!({"live": true, "ready": false, "shards": [
            {"shard": 0, "up": true, "state": "up"}, {"shard": 1, "up": false, "state": "starting"}]});
        assert_eq!(health_table(&body), "LIVE   yes\nREADY  no\n\nSHARD  STATE\n0      up\n1      starting\n");
    }
}
