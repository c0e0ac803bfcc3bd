//! A whole broker in the test process, and a glommio executor to run client code on.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code

use std::time::Duration;

use corelog_net::server::{LocalBroker, ServerConfig};

pub fn broker(dir: &std::path::Path) -> LocalBroker {
    broker_with_groups(dir, Default::default())
}

/// A broker whose group coordinator runs with `group` (tests shorten its delays).
pub fn broker_with_groups(dir: &std::path::Path, group: corelog_net::group::classic::CoordinatorConfig) -> LocalBroker {
    let config = ServerConfig {
        node_id: 0,
        data_dir: dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        advertised: None,
        cache_budget_bytes_per_shard: 16 << 20,
        journal_bytes_per_shard: 16 << 20,
        write_shape: Default::default(),
        limits: Default::default(),
        max_connections_per_shard: 100,
        fetch_max_bytes: 55 << 20,
        queued_max_request_bytes_per_shard: 64 << 20,
        connections_per_sec_max_per_shard: None,
        default_log: corelog_engine::log::LogConfig::default(),
        num_partitions: 1,
        auto_create_topics: false,
        retention_check_interval: Duration::from_secs(300),
        group,
        offsets_topic_partitions: 4,
    };
    LocalBroker::start(config, 2).expect("start the broker")
}

pub fn run<T>(work: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap().run(work)
}
