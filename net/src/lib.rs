//! corelog's Kafka wire protocol: framing, request headers, the connection loop, the
//! per-shard listener, and one handler module per API.
//!
//! The broker advertises only the APIs it implements (see [`api::SUPPORTED`]), so clients
//! fail clearly rather than half-working.

pub mod admin;
pub mod api;
pub mod broker;
pub mod configs;
pub mod connection;
pub mod frame;
pub mod group;
pub mod handlers;
pub mod listener;
pub mod metrics;
pub mod registry;
pub mod request_budget;
pub mod server;
pub mod socket_out;

pub use connection::ConnectionLimits;
pub use listener::{Listener, ListenerLimits, ListenerStats};
