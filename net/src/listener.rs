//! The Kafka listener of one shard. Every shard binds the same address with SO_REUSEPORT
//! (glommio sets it), so the kernel spreads connections across shards; each connection then
//! lives on the shard that accepted it.
//!
//! Limits: `max_connections` per shard, a connection beyond it is accepted and closed at once
//! (the client sees a clean close and retries elsewhere or later); the shard's
//! [`RequestBudget`] for request bytes read and not yet answered, shared by its connections.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use glommio::net::TcpListener;

use crate::broker::ShardBroker;
use crate::connection::{self, ConnectionLimits};
use crate::request_budget::{RequestBudget, RequestBudgetStats};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListenerStats {
    pub accepted: u64,
    pub refused_over_limit: u64,
    pub closed_by_broker: u64,
    pub active: usize,
}

pub struct Listener {
    listener: TcpListener,
    limits: ConnectionLimits,
    max_connections: usize,
    budget: Rc<RequestBudget>,
    stats: Rc<Cell<ListenerStats>>,
}

/// Fails if another process already listens on `address`. SO_REUSEPORT, which the shards
/// need to share the port, would otherwise let a second broker (or anything else setting it)
/// bind the same port silently and take a share of the connections. Called once, before the
/// first shard binds; port 0 always gets a fresh port.
pub fn check_address_free(address: SocketAddr) -> std::io::Result<()> {
    if address.port() == 0 {
        return Ok(());
    }
    // std's listener does not set SO_REUSEPORT: binding fails while anyone listens there.
    std::net::TcpListener::bind(address).map(drop).map_err(|error| {
        std::io::Error::new(error.kind(), format!("{address} is already in use by another process ({error})"))
    })
}

impl Listener {
    /// Binds `address` on the calling shard.
    pub fn bind(
        address: SocketAddr,
        limits: ConnectionLimits,
        max_connections: usize,
        queued_max_request_bytes: usize,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).map_err(std::io::Error::from)?;
        Ok(Self {
            listener,
            limits,
            max_connections,
            budget: RequestBudget::new(queued_max_request_bytes),
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
            loop {
                let stream = match self.listener.accept().await {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if self.stats.get().active >= self.max_connections {
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
                    if let Err(error) = connection::serve(&mut stream, &limits, &budget, &broker, peer).await {
                        tracing::debug!(?peer, %error, "closing connection");
                        Self::update(&stats, |s| s.closed_by_broker += 1);
                    }
                    Self::update(&stats, |s| s.active -= 1);
                })
                .detach();
            }
        };
        futures_lite::future::or(accept_loop, stop).await;
    }
}
