//! corelog's Kafka wire protocol: framing, request headers, the connection loop, the
//! per-shard listener, and one handler module per API.
//!
//! This first piece is the connection layer and ApiVersions (with the KIP-511 fallback);
//! the broker advertises only the APIs it implements, so clients fail clearly rather than
//! half-working. Produce, Fetch, Metadata and the rest follow (issue 3).

pub mod api;
pub mod connection;
pub mod frame;
pub mod handlers;
pub mod listener;

pub use connection::ConnectionLimits;
pub use listener::{Listener, ListenerStats};
