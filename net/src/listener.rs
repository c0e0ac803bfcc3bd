//! The Kafka listener of one shard. Every shard binds the same address with SO_REUSEPORT
//! (glommio sets it), so the kernel spreads connections across shards; each connection then
//! lives on the shard that accepted it.
//!
//! Limits ([`ListenerLimits`]): `max_connections` per shard, a connection beyond it is accepted
//! and closed at once (the client sees a clean close and retries elsewhere or later); new
//! connections accepted at most `connections_per_sec_max` a second (Kafka's
//! `max.connection.creation.rate`, KIP-612: beyond it the shard waits before accepting, so a
//! connection storm waits in the kernel's backlog instead of taking the shard's time); the
//! shard's [`RequestBudget`] for request bytes read and not yet answered, shared by its
//! connections.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use glommio::net::TcpListener;

use crate::broker::ShardBroker;
use crate::connection::{self, ConnectionError, ConnectionLimits};
use crate::frame::FrameError;
use crate::request_budget::{RequestBudget, RequestBudgetStats};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListenerStats {
    pub accepted: u64,
    pub refused_over_limit: u64,
    /// Closed by the broker: the sum of the reasons below but `closed_by_client`.
    pub closed_by_broker: u64,
    /// The peer closed (or reset) the connection.
    pub closed_by_client: u64,
    /// No request, or no rest of a frame, within the idle timeout (or too slow a frame body).
    pub closed_idle: u64,
    /// Bad frames or requests: malformed, unsupported, unknown.
    pub closed_rejected: u64,
    /// The peer accepted no response bytes within the idle timeout.
    pub closed_write_stalled: u64,
    /// Writing a response failed.
    pub closed_error: u64,
    /// Accepts that waited for the connection creation rate.
    pub throttled: u64,
    pub active: usize,
}

/// The limits of one shard's listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub max_connections: usize,
    /// The shard's [`RequestBudget`].
    pub queued_max_request_bytes: usize,
    /// New connections accepted per second at most (None: no limit).
    pub connections_per_sec_max: Option<f64>,
}

pub struct Listener {
    listener: TcpListener,
    limits: ConnectionLimits,
    listener_limits: ListenerLimits,
    budget: Rc<RequestBudget>,
    stats: Rc<Cell<ListenerStats>>,
}

/// Paces accepts to a rate, allowing a burst of one second's worth.
struct AcceptPace {
    per_sec: f64,
    tokens: f64,
    refilled: std::time::Instant,
}

impl AcceptPace {
    fn new(per_sec: f64) -> Self {
        let per_sec = per_sec.max(0.001);
        Self { per_sec, tokens: per_sec.max(1.0), refilled: std::time::Instant::now() }
    }

    /// How long to wait before the next accept (zero: now), taking its token.
    fn take(&mut self, now: std::time::Instant) -> std::time::Duration {
        let burst = self.per_sec.max(1.0);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.per_sec).min(burst);
        self.refilled = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

/// Fails if another process already listens on `address`. SO_REUSEPORT, which the shards
/// need to share the port, would otherwise let a second broker (or anything else setting it)
/// bind the same port silently and take a share of the connections. Called once, before the
/// first shard binds; port 0 always gets a fresh port.
///
/// A broker restarted on its port while clients were connected finds the port still held
/// by the previous process's closing connections (FIN_WAIT2 until each client closes its
/// end, up to a minute): those block a plain bind but not the shards' SO_REUSEPORT bind.
/// So a failed bind is confirmed by connecting: the port is in use only if something
/// accepts the connection.
pub fn check_address_free(address: SocketAddr) -> std::io::Result<()> {
    if address.port() == 0 {
        return Ok(());
    }
    // std's listener does not set SO_REUSEPORT: binding fails while anyone listens there.
    let Err(error) = std::net::TcpListener::bind(address).map(drop) else {
        return Ok(());
    };
    let probe = if address.ip().is_unspecified() {
        let loopback: std::net::IpAddr =
            if address.is_ipv6() { std::net::Ipv6Addr::LOCALHOST.into() } else { std::net::Ipv4Addr::LOCALHOST.into() };
        SocketAddr::new(loopback, address.port())
    } else {
        address
    };
    // Only a refusal proves nobody listens: a listener with a full backlog lets the probe
    // time out instead.
    let refused = |result: std::io::Result<std::net::TcpStream>| matches!(result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
    if error.kind() == std::io::ErrorKind::AddrInUse
        && refused(std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_secs(1)))
    {
        tracing::info!(%address, "the port is held only by connections of a previous process: binding it");
        return Ok(());
    }
    Err(std::io::Error::new(error.kind(), format!("{address} is already in use by another process ({error})")))
}

impl Listener {
    /// Binds `address` on the calling shard.
    pub fn bind(
        address: SocketAddr,
        limits: ConnectionLimits,
        listener_limits: ListenerLimits,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).map_err(std::io::Error::from)?;
        Ok(Self {
            listener,
            limits,
            listener_limits,
            budget: RequestBudget::new(listener_limits.queued_max_request_bytes),
            stats: Rc::new(Cell::new(ListenerStats::default())),
        })
    }

    pub fn request_budget_stats(&self) -> RequestBudgetStats {
        self.budget.stats()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr().map_err(std::io::Error::from)
    }

    pub fn stats(&self) -> ListenerStats {
        self.stats.get()
    }

    fn update(stats: &Cell<ListenerStats>, f: impl FnOnce(&mut ListenerStats)) {
        let mut current = stats.get();
        f(&mut current);
        stats.set(current);
    }

    /// Accepts connections until `stop` resolves; each runs as its own task.
    pub async fn run(&self, broker: Rc<ShardBroker>, stop: impl std::future::Future<Output = ()>) {
        let accept_loop = async {
            let mut pace = self.listener_limits.connections_per_sec_max.map(AcceptPace::new);
            loop {
                if let Some(pace) = pace.as_mut() {
                    let wait = pace.take(std::time::Instant::now());
                    if !wait.is_zero() {
                        Self::update(&self.stats, |s| s.throttled += 1);
                        glommio::timer::sleep(wait).await;
                    }
                }
                let stream = match self.listener.accept().await {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if self.stats.get().active >= self.listener_limits.max_connections {
                    Self::update(&self.stats, |s| s.refused_over_limit += 1);
                    drop(stream);
                    continue;
                }
                Self::update(&self.stats, |s| {
                    s.accepted += 1;
                    s.active += 1;
                });
                let (stats, limits, broker) = (Rc::clone(&self.stats), self.limits.clone(), Rc::clone(&broker));
                let budget = Rc::clone(&self.budget);
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    let mut stream = stream;
                    let _ = stream.set_nodelay(true);
                    // Responses go out with non-blocking sendmsg and splice (glommio's own
                    // reads and writes use MSG_DONTWAIT and readiness polls, unaffected).
                    if let Err(error) = corelog_engine::side_ring::set_nonblocking(stream.as_raw_fd()) {
                        tracing::warn!(?peer, %error, "cannot make the connection non-blocking: closing it");
                        Self::update(&stats, |s| s.active -= 1);
                        return;
                    }
                    let result = connection::serve(&mut stream, &limits, &budget, &broker, peer).await;
                    let peer_closed = match &result {
                        Ok(()) => true,
                        Err(error) => {
                            tracing::debug!(?peer, %error, "closing connection");
                            matches!(error, ConnectionError::Frame(FrameError::Truncated | FrameError::Io(_)))
                        }
                    };
                    Self::update(&stats, |s| match &result {
                        _ if peer_closed => s.closed_by_client += 1,
                        Ok(()) => {}
                        Err(error) => {
                            s.closed_by_broker += 1;
                            match error {
                                ConnectionError::Idle(_)
                                | ConnectionError::Frame(FrameError::TimedOut(_) | FrameError::Slow { .. }) => {
                                    s.closed_idle += 1
                                }
                                ConnectionError::WriteStalled(_) => s.closed_write_stalled += 1,
                                ConnectionError::Write(_) => s.closed_error += 1,
                                _ => s.closed_rejected += 1,
                            }
                        }
                    });
                    Self::update(&stats, |s| s.active -= 1);
                })
                .detach();
            }
        };
        futures_lite::future::or(accept_loop, stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn accepts_are_paced_to_the_rate_after_a_burst_of_one_second() {
        let start = Instant::now();
        let mut pace = AcceptPace::new(10.0);
        pace.refilled = start;
        let waits: Vec<Duration> = (0..12).map(|_| pace.take(start)).collect();
        assert!(waits[..10].iter().all(Duration::is_zero), "a burst of 10: {waits:?}");
        assert_eq!(waits[10], Duration::from_millis(100));
        assert_eq!(waits[11], Duration::from_millis(200));
        // A second later the bucket has refilled by 10 (minus the two taken on credit).
        assert!(pace.take(start + Duration::from_secs(1)).is_zero());
    }
}
