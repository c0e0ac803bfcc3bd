//! corelog's Kafka wire protocol: framing, request headers, the connection loop, the
//! per-shard listener, and one handler module per API.
//!
//! Implemented so far: the connection layer, ApiVersions (with the KIP-511 fallback),
//! Metadata (with auto-creation), CreateTopics and DeleteTopics. The broker advertises only
//! the APIs it implements, so clients fail clearly rather than half-working. Produce, Fetch
//! and the rest follow (issue 3).

pub mod api;
pub mod broker;
pub mod connection;
pub mod frame;
pub mod handlers;
pub mod listener;
pub mod registry;
pub mod server;

pub use connection::ConnectionLimits;
pub use listener::{Listener, ListenerStats};
