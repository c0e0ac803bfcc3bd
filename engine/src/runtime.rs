//! The shard runtime: one glommio executor per core, pinned, each owning its partitions;
//! typed request/reply messages between shards over bounded channels; a partition → shard
//! table every shard reads without locking; orderly start and graceful stop; fail-stop.
//!
//! A shard's `main` future gets a [`ShardContext`]. It registers a handler for requests from
//! other shards with [`ShardContext::serve`] and sends requests with [`ShardContext::call`]
//! (a call to itself runs the handler locally). The process stops when [`Runtime::stop`] is
//! called (the broker does it on SIGINT/SIGTERM); each shard sees it through
//! [`ShardContext::stopped`], finishes its work (flush everything) and returns.
//!
//! No executor exits before every shard's `main` has returned: a shard that is done keeps
//! running (answering calls from shards still flushing) until all are done. Then every
//! context, with its channel ends, is gone while all executors still run, so no waker of one
//! shard's task is woken or dropped by another shard after that task's executor has freed it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::{LocalExecutorBuilder, Placement};

use crate::log::partition::TopicPartition;

pub type ShardId = usize;

/// Exit status of a fail-stop: the environment is broken (data dir gone, disk failing).
pub const EXIT_FATAL: i32 = 70;

/// Stops the whole process after a fatal environment error, so that no shard keeps serving
/// while another is gone. Logs the reason first. Never unwinds.
pub fn fail_stop(reason: &dyn fmt::Display) -> ! {
    tracing::error!(%reason, "fatal: stopping the broker");
    eprintln!("corelog: fatal: {reason}");
    std::process::exit(EXIT_FATAL)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start shard {shard}: {message}")]
    Start { shard: ShardId, message: String },
    #[error("shard {shard} panicked or failed: {message}")]
    Join { shard: ShardId, message: String },
}

/// Failure of a cross-shard call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("shard {0} does not exist")]
    NoSuchShard(ShardId),
    #[error("shard {0} is not serving requests (stopping or not started)")]
    Unavailable(ShardId),
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of shards (executor threads).
    pub shards: usize,
    /// CPU of each shard, to pin to; None leaves threads unpinned (tests).
    pub cpus: Option<Vec<usize>>,
    /// Capacity of each shard-to-shard channel: senders wait when it is full.
    pub channel_capacity: usize,
    /// Memory glommio registers per shard for DMA buffers.
    pub io_memory_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { shards: 1, cpus: None, channel_capacity: 1024, io_memory_bytes: 8 << 20 }
    }
}

/// Which shard owns which partition. Written rarely (topic creation), read on every request:
/// readers keep a cached snapshot and only take the lock when the version moved.
pub struct PlacementTable {
    shard_count: usize,
    version: AtomicU64,
    map: RwLock<Arc<HashMap<TopicPartition, ShardId>>>,
}

impl PlacementTable {
    pub fn new(shard_count: usize) -> Arc<Self> {
        assert!(shard_count > 0);
        Arc::new(Self { shard_count, version: AtomicU64::new(0), map: RwLock::new(Arc::new(HashMap::new())) })
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    fn snapshot(&self) -> (u64, Arc<HashMap<TopicPartition, ShardId>>) {
        let map = match self.map.read() {
            Ok(map) => Arc::clone(&map),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        (self.version.load(Ordering::Acquire), map)
    }

    /// Assigns the partition to the shard owning the fewest partitions (ties: lowest id),
    /// unless already assigned. Returns its owner.
    pub fn assign(&self, partition: &TopicPartition) -> ShardId {
        let mut guard = match self.map.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(&shard) = guard.get(partition) {
            return shard;
        }
        let mut load = vec![0usize; self.shard_count];
        for &shard in guard.values() {
            load[shard] += 1;
        }
        let shard = (0..self.shard_count).min_by_key(|&s| (load[s], s)).unwrap_or(0);
        let mut next = HashMap::clone(&guard);
        next.insert(partition.clone(), shard);
        *guard = Arc::new(next);
        self.version.fetch_add(1, Ordering::Release);
        shard
    }

    pub fn lookup(&self, partition: &TopicPartition) -> Option<ShardId> {
        self.snapshot().1.get(partition).copied()
    }
}

/// A shard's lock-free view of the placement table.
pub struct PlacementView {
    table: Arc<PlacementTable>,
    cached: RefCell<(u64, Arc<HashMap<TopicPartition, ShardId>>)>,
}

impl PlacementView {
    pub fn new(table: Arc<PlacementTable>) -> Self {
        let snapshot = table.snapshot();
        Self { table, cached: RefCell::new(snapshot) }
    }

    pub fn owner(&self, partition: &TopicPartition) -> Option<ShardId> {
        let version = self.table.version.load(Ordering::Acquire);
        if self.cached.borrow().0 != version {
            *self.cached.borrow_mut() = self.table.snapshot();
        }
        self.cached.borrow().1.get(partition).copied()
    }

    pub fn table(&self) -> &Arc<PlacementTable> {
        &self.table
    }
}

struct Envelope<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<Resp>,
}

type Handler<Req, Resp> = Rc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Resp>>>>;

/// What a shard's main future gets: its identity, the other shards, the placement table and
/// the stop signal. `!Send`: it lives on its shard.
pub struct ShardContext<Req: Send + 'static, Resp: Send + 'static> {
    pub id: ShardId,
    pub shard_count: usize,
    pub placement: PlacementView,
    /// DMA memory glommio registered for this shard's I/O buffers.
    pub io_memory_bytes: usize,
    senders: Senders<Envelope<Req, Resp>>,
    receivers: RefCell<Option<glommio::channels::channel_mesh::Receivers<Envelope<Req, Resp>>>>,
    handler: RefCell<Option<Handler<Req, Resp>>>,
    stop: Arc<AtomicBool>,
}

impl<Req: Send + 'static, Resp: Send + 'static> ShardContext<Req, Resp> {
    /// Starts serving requests from other shards with `handler`; one task per peer channel.
    pub fn serve<F, Fut>(&self, handler: F)
    where
        F: Fn(Req) -> Fut + 'static,
        Fut: Future<Output = Resp> + 'static,
    {
        let handler: Handler<Req, Resp> = Rc::new(move |req| Box::pin(handler(req)));
        *self.handler.borrow_mut() = Some(Rc::clone(&handler));
        let Some(mut receivers) = self.receivers.borrow_mut().take() else {
            return;
        };
        for (_, stream) in receivers.streams() {
            let handler = Rc::clone(&handler);
            glommio::spawn_local(async move {
                while let Some(envelope) = stream.recv().await {
                    let handler = Rc::clone(&handler);
                    glommio::spawn_local(async move {
                        let response = handler(envelope.request).await;
                        let _ = envelope.reply.send(response);
                    })
                    .detach();
                }
            })
            .detach();
        }
    }

    /// Sends a request to shard `to` and awaits its reply. Waits while that shard's channel
    /// is full (backpressure).
    pub async fn call(&self, to: ShardId, request: Req) -> Result<Resp, CallError> {
        if to >= self.shard_count {
            return Err(CallError::NoSuchShard(to));
        }
        if to == self.id {
            // Run as its own task, as a call from another shard does: the work completes even
            // if the caller goes away (a connection closing mid-request).
            let handler = self.handler.borrow().clone().ok_or(CallError::Unavailable(to))?;
            let (reply, response) = oneshot::channel();
            glommio::spawn_local(async move {
                let _ = reply.send(handler(request).await);
            })
            .detach();
            return response.await.map_err(|_| CallError::Unavailable(to));
        }
        let (reply, response) = oneshot::channel();
        self.senders.send_to(to, Envelope { request, reply }).await.map_err(|_| CallError::Unavailable(to))?;
        response.await.map_err(|_| CallError::Unavailable(to))
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Resolves once the runtime is asked to stop.
    pub async fn stopped(&self) {
        while !self.is_stopping() {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long a finished shard waits for the others before its executor exits anyway (a shard
/// that panicked never arrives).
const EXIT_WAIT_MAX: Duration = Duration::from_secs(30);

/// Counts shards whose `main` has returned (see the module docs).
struct ExitBarrier {
    shards: usize,
    arrived: AtomicUsize,
}

impl ExitBarrier {
    async fn arrive_and_wait(&self, shard: ShardId) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + EXIT_WAIT_MAX;
        while self.arrived.load(Ordering::Acquire) < self.shards {
            if Instant::now() >= deadline {
                tracing::warn!(shard, waited = ?EXIT_WAIT_MAX, "exiting before every shard has finished");
                return;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        // One more turn of the reactor for wakes that other shards' last drops queued here.
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// The running shards.
pub struct Runtime<T: Send + 'static> {
    handles: Vec<std::thread::JoinHandle<Result<T, String>>>,
    stop: Arc<AtomicBool>,
}

impl<T: Send + 'static> Runtime<T> {
    /// Starts `config.shards` executors, joins them in a full mesh of bounded channels, and
    /// runs `main` on each.
    pub fn start<Req, Resp, F, Fut>(
        config: &RuntimeConfig,
        placement: Arc<PlacementTable>,
        main: F,
    ) -> Result<Self, RuntimeError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(ShardContext<Req, Resp>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        assert_eq!(placement.shard_count(), config.shards, "placement table sized for another shard count");
        let mesh = MeshBuilder::<Envelope<Req, Resp>, Full>::full(config.shards, config.channel_capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let exit = Arc::new(ExitBarrier { shards: config.shards, arrived: AtomicUsize::new(0) });
        let mut handles = Vec::with_capacity(config.shards);
        for shard in 0..config.shards {
            let placement_kind = match &config.cpus {
                Some(cpus) => Placement::Fixed(cpus[shard % cpus.len()]),
                None => Placement::Unbound,
            };
            let builder = LocalExecutorBuilder::new(placement_kind)
                .name(&format!("shard-{shard}"))
                .io_memory(config.io_memory_bytes);
            let (mesh, stop_flag, placement, main, exit) =
                (mesh.clone(), Arc::clone(&stop), Arc::clone(&placement), main.clone(), Arc::clone(&exit));
            let io_memory_bytes = config.io_memory_bytes;
            let handle = builder
                .spawn(move || async move {
                    let run = async {
                        let (senders, receivers) = mesh.join().await.map_err(|e| format!("mesh join failed: {e}"))?;
                        let context = ShardContext {
                            id: senders.peer_id(),
                            shard_count: senders.nr_consumers(),
                            placement: PlacementView::new(placement),
                            io_memory_bytes,
                            senders,
                            receivers: RefCell::new(Some(receivers)),
                            handler: RefCell::new(None),
                            stop: stop_flag,
                        };
                        Ok(main(context).await)
                    };
                    let result = run.await;
                    exit.arrive_and_wait(shard).await;
                    result
                })
                .map_err(|e| RuntimeError::Start { shard, message: e.to_string() })?;
            let thread = std::thread::Builder::new()
                .name(format!("shard-{shard}-join"))
                .spawn(move || handle.join().map_err(|e| e.to_string()).and_then(|r| r))
                .map_err(|e| RuntimeError::Start { shard, message: e.to_string() })?;
            handles.push(thread);
        }
        Ok(Self { handles, stop })
    }

    /// Asks every shard to stop (they finish their work and return).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// A handle that can stop the runtime from another thread (signal handling).
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Waits for every shard; returns their results in shard order.
    pub fn join(self) -> Result<Vec<T>, RuntimeError> {
        let mut results = Vec::with_capacity(self.handles.len());
        for (shard, handle) in self.handles.into_iter().enumerate() {
            let result = handle
                .join()
                .map_err(|_| RuntimeError::Join { shard, message: "panicked".into() })?
                .map_err(|message| RuntimeError::Join { shard, message })?;
            results.push(result);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_balances_and_is_stable() {
        let table = PlacementTable::new(3);
        let owners: Vec<ShardId> = (0..6).map(|p| table.assign(&TopicPartition::new("t", p))).collect();
        assert_eq!(owners, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(table.assign(&TopicPartition::new("t", 4)), 1, "assignment is idempotent");
        let view = PlacementView::new(Arc::clone(&table));
        assert_eq!(view.owner(&TopicPartition::new("t", 5)), Some(2));
        assert_eq!(view.owner(&TopicPartition::new("u", 0)), None);
        table.assign(&TopicPartition::new("u", 0));
        assert_eq!(view.owner(&TopicPartition::new("u", 0)), Some(0), "view follows new versions");
    }

    #[test]
    fn shards_exchange_typed_requests_and_stop_on_request() {
        let placement = PlacementTable::new(2);
        let config = RuntimeConfig { shards: 2, ..RuntimeConfig::default() };
        let runtime = Runtime::start(&config, placement, |ctx: ShardContext<u64, (ShardId, u64)>| async move {
            let me = ctx.id;
            ctx.serve(move |x: u64| async move { (me, x * 2) });
            // Every shard asks every shard (itself included) to double a number.
            let mut answers = Vec::new();
            for to in 0..ctx.shard_count {
                answers.push(ctx.call(to, 10 + to as u64).await.unwrap());
            }
            assert_eq!(ctx.call(7, 1).await, Err(CallError::NoSuchShard(7)));
            ctx.stopped().await;
            answers
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        runtime.stop();
        let results = runtime.join().unwrap();
        for answers in results {
            assert_eq!(answers, vec![(0, 20), (1, 22)]);
        }
    }

    #[test]
    fn a_finished_shard_answers_calls_until_every_shard_is_done() {
        let placement = PlacementTable::new(2);
        let config = RuntimeConfig { shards: 2, ..RuntimeConfig::default() };
        let runtime = Runtime::start(&config, placement, |ctx: ShardContext<u64, u64>| async move {
            ctx.serve(|x: u64| async move { x + 1 });
            ctx.stopped().await;
            if ctx.id == 0 {
                return None; // done at once
            }
            // Still flushing long after shard 0 returned: shard 0 must still answer (without
            // the exit barrier this call never completes).
            glommio::timer::sleep(Duration::from_millis(300)).await;
            let call = async { Ok(ctx.call(0, 41).await) };
            glommio::timer::timeout(Duration::from_secs(5), call).await.ok().and_then(Result::ok)
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        runtime.stop();
        assert_eq!(runtime.join().unwrap(), vec![None, Some(42)]);
    }
}
