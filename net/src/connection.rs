//! One client connection, pipelined for Produce and Fetch: a reader takes requests off the
//! socket in order and runs each one's ordered stage (decoding; for Produce, the appends, so
//! one producer's batches keep their order), then queues it; a writer finishes the queued
//! requests in order (Produce acknowledgements, Fetch reads and long polls) and writes their
//! responses, so responses go back in request order while the next requests are already being
//! read and appended. Any other request runs entirely in the reader once everything before
//! it is answered, as Kafka runs one request per connection at a time. At most `max_in_flight_requests` requests
//! and `max_in_flight_bytes` of request frames are queued; past that the reader stops
//! reading (TCP backpressure). Every frame also holds a reservation in the shard's
//! [`RequestBudget`] from its size prefix until its response is written, so all connections of
//! a shard together stop reading once the shard's request memory is spent.
//!
//! Time limits: a connection waiting for the next request, or for the rest of a frame, longer
//! than `idle_timeout` is closed (slow senders, partial frames); so is one whose peer takes
//! longer than that to accept a response (a client that never reads).
//!
//! Any framing or decoding failure closes this connection only (as Kafka does for requests
//! it cannot parse), after the responses to the requests before it; the shard keeps serving
//! everyone else.
//!
//! Runs on the shard that accepted the connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, ConsumerGroupDescribeRequest, ConsumerGroupHeartbeatRequest,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest,
    HeartbeatRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest, RequestHeader, ResponseHeader, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api;
use crate::broker::ShardBroker;
use crate::frame::{self, FrameError};
use crate::handlers::fetch_response::Chunk;
use crate::handlers::produce::PendingProduce;
use crate::handlers::{
    alter_configs, api_versions, consumer_group_describe, consumer_group_heartbeat, create_partitions, create_topics,
    delete_groups, delete_records, delete_topics, describe_cluster, describe_configs, describe_groups, fetch,
    fetch_response, find_coordinator, heartbeat, init_producer_id, join_group, leave_group, list_groups, list_offsets,
    metadata, offset_commit, offset_delete, offset_fetch, offset_for_leader_epoch, produce, sync_group,
};
use crate::metrics::{InFlight, RequestResult};
use crate::request_budget::{RequestBudget, Reservation};
use crate::socket_out::SocketOut;

/// Who sent a request: its header's client id and the connection's peer address.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub client_id: String,
    /// Kafka's form: `/` and the peer's IP address.
    pub host: String,
}

/// The limits of one connection (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Largest request frame accepted [`socket.request.max.bytes`, 100 MiB].
    pub max_frame_bytes: usize,
    /// A connection that sends no request for this long is closed [`connections.max.idle.ms`, 10 min].
    pub idle_timeout: Duration,
    /// Requests read but not yet answered, per connection.
    pub max_in_flight_requests: usize,
    /// Request bytes read but not yet answered, per connection (one frame may exceed it; the
    /// next is read once the queue is below it again).
    pub max_in_flight_bytes: usize,
    /// While the shard's request budget is contended, a frame whose body arrives slower than
    /// `slow_frame_min_bytes` per `slow_frame_window` is given up and its connection closed:
    /// its reservation (taken for the whole announced size) is needed by others.
    pub slow_frame_window: Duration,
    pub slow_frame_min_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 100 << 20,
            idle_timeout: Duration::from_secs(600),
            max_in_flight_requests: 64,
            max_in_flight_bytes: 100 << 20,
            slow_frame_window: Duration::from_secs(1),
            slow_frame_min_bytes: 64 << 10,
        }
    }
}

/// Why a connection was closed by the broker.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("request of {0} bytes is shorter than a request header")]
    ShortHeader(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("unsupported {key:?} version {version}")]
    UnsupportedVersion { key: ApiKey, version: i16 },
    #[error("malformed {key:?} v{version} request: {message}")]
    Malformed { key: ApiKey, version: i16, message: String },
    #[error("idle for longer than {0:?}")]
    Idle(Duration),
    #[error("the client accepted no response bytes for {0:?}")]
    WriteStalled(Duration),
    #[error("write failed: {0}")]
    Write(std::io::Error),
}

/// A request past its ordered stage, waiting for its turn to be answered.
enum Pending {
    /// The response is ready (or there is none).
    Done(Option<BytesMut>),
    Produce(Call, PendingProduce),
    Fetch(Call, FetchRequest),
}

impl Pending {
    /// The rest of the work, then the response frame (or none) as chunks to write in
    /// order: one buffer, or for a Fetch the fields, the record batches as they are and
    /// slices of segment files.
    async fn finish(self, broker: &ShardBroker) -> Result<Option<Vec<Chunk>>, ConnectionError> {
        let whole = |frame: BytesMut| vec![Chunk::Memory(frame.freeze())];
        match self {
            Pending::Done(response) => Ok(response.map(whole)),
            Pending::Produce(call, pending) => {
                let responds = pending.responds();
                let response = pending.finish(broker).await;
                if responds { call.encode(&response).map(|frame| Some(whole(frame))) } else { Ok(None) }
            }
            Pending::Fetch(call, request) => {
                let response = fetch::handle(broker, request, call.version).await;
                fetch_response::encode(&response, call.version, call.correlation_id).map(Some).map_err(encode_error)
            }
        }
    }
}

/// A request in the queue, with the frame bytes it counts and its share of the shard's budget
/// (released when the entry is dropped: once answered, or when the connection closes).
struct Queued {
    pending: Pending,
    bytes: usize,
    /// API key and when the whole frame had been read: the request's latency starts there.
    key: i16,
    started: Instant,
    _reservation: Reservation,
    _in_flight: InFlight,
}

/// The queue between the reader and the writer of one connection.
#[derive(Default)]
struct Queue {
    entries: RefCell<VecDeque<Queued>>,
    bytes: Cell<usize>,
    /// Requests queued or being finished by the writer.
    outstanding: Cell<usize>,
    reader_done: Cell<bool>,
    /// The writer waits for entries; the reader for room.
    writer: Cell<Option<Waker>>,
    reader: Cell<Option<Waker>>,
}

impl Queue {
    fn wake(slot: &Cell<Option<Waker>>) {
        if let Some(waker) = slot.take() {
            waker.wake();
        }
    }

    fn push(&self, queued: Queued) {
        let bytes = queued.bytes;
        self.entries.borrow_mut().push_back(queued);
        self.bytes.set(self.bytes.get() + bytes);
        self.outstanding.set(self.outstanding.get() + 1);
        Self::wake(&self.writer);
    }

    /// Waits until the queue has room for one more request.
    async fn room(&self, limits: &ConnectionLimits) {
        std::future::poll_fn(|cx| {
            let full = self.entries.borrow().len() >= limits.max_in_flight_requests.max(1)
                || self.bytes.get() >= limits.max_in_flight_bytes.max(1);
            if full {
                self.reader.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// The next request to answer; None once the reader is done and everything is answered.
    async fn next(&self) -> Option<Queued> {
        std::future::poll_fn(|cx| {
            if let Some(entry) = self.entries.borrow_mut().pop_front() {
                return Poll::Ready(Some(entry));
            }
            if self.reader_done.get() {
                return Poll::Ready(None);
            }
            self.writer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Waits until every queued request has been answered.
    async fn drained(&self) {
        std::future::poll_fn(|cx| {
            if self.outstanding.get() == 0 {
                Poll::Ready(())
            } else {
                self.reader.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    fn answered(&self, bytes: usize) {
        self.bytes.set(self.bytes.get() - bytes);
        self.outstanding.set(self.outstanding.get() - 1);
        Self::wake(&self.reader);
    }

    fn finish_reading(&self) {
        self.reader_done.set(true);
        Self::wake(&self.writer);
    }
}

/// One half of a stream shared by the reader and the writer of a connection. Both run in
/// the connection's one task, so the borrow in each poll never overlaps the other's.
struct Half<'a, S>(&'a RefCell<&'a mut S>);

impl<S: AsyncRead + Unpin> AsyncRead for Half<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut **self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Half<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut **self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut **self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut **self.0.borrow_mut()).poll_close(cx)
    }
}

/// Serves requests on `stream` until the peer closes it (Ok) or the broker must (Err).
/// `stream` must be a non-blocking socket: responses are written to its fd directly
/// ([`SocketOut`]).
pub async fn serve<S: AsyncRead + AsyncWrite + AsRawFd + Unpin>(
    stream: &mut S,
    limits: &ConnectionLimits,
    budget: &Rc<RequestBudget>,
    broker: &ShardBroker,
    peer: Option<std::net::SocketAddr>,
) -> Result<(), ConnectionError> {
    let host = peer.map(|p| format!("/{}", p.ip())).unwrap_or_default();
    let socket = SocketOut { fd: stream.as_raw_fd(), ring: broker.log.side_ring() };
    let shared = RefCell::new(stream);
    let queue = Queue::default();
    let read_result: Cell<Option<Result<(), ConnectionError>>> = Cell::new(None);
    let reader = async {
        let result = read_requests(&mut Half(&shared), socket.fd, limits, budget, broker, &queue, &host).await;
        read_result.set(Some(result));
        queue.finish_reading();
        // The writer ends the connection once it has answered everything queued.
        std::future::pending::<Result<(), ConnectionError>>().await
    };
    let writer = async {
        let mut out = Half(&shared);
        while let Some(queued) = queue.next().await {
            let (key, started, bytes) = (queued.key, queued.started, queued.bytes);
            let result = if let Some(response) = queued.pending.finish(broker).await? {
                let write = async { Ok(socket.write_chunks(&mut out, &response).await) };
                match glommio::timer::timeout(limits.idle_timeout, write).await {
                    Ok(written) => written.map_err(ConnectionError::Write)?,
                    Err(_) => return Err(ConnectionError::WriteStalled(limits.idle_timeout)),
                }
                RequestResult::Ok
            } else {
                RequestResult::Unanswered
            };
            broker.metrics.request_done(key, result, started);
            queue.answered(bytes);
        }
        Ok(())
    };
    futures_lite::future::or(writer, reader).await?;
    read_result.take().unwrap_or(Ok(()))
}

/// The reader: frames off the socket (`socket` is the fd `input` reads from), each one's
/// ordered stage, then into the queue.
async fn read_requests<R: AsyncRead + Unpin>(
    input: &mut R,
    socket: std::os::fd::RawFd,
    limits: &ConnectionLimits,
    budget: &Rc<RequestBudget>,
    broker: &ShardBroker,
    queue: &Queue,
    host: &str,
) -> Result<(), ConnectionError> {
    loop {
        queue.room(limits).await;
        let read = frame::read_frame_size(input, limits.max_frame_bytes);
        let Some(size) = within_idle_timeout(limits, read).await? else { return Ok(()) };
        // Waiting here is the broker's doing, so it does not count against the client.
        let reservation = budget.reserve(size).await;
        // The body within the idle timeout; slow senders give way while others need the memory.
        let pace = frame::BodyPace {
            timeout: limits.idle_timeout,
            slow_window: limits.slow_frame_window,
            slow_min_bytes: limits.slow_frame_min_bytes,
            contended: &|| budget.has_waiters(),
        };
        let frame = frame::read_frame_body(input, Some(socket), size, &pace).await?;
        // Only Produce and Fetch are pipelined; any other request runs once everything before
        // it is answered, as Kafka runs a connection's requests one at a time (a commit then
        // a fetch of the offsets must see the commit).
        let pipelined = frame.len() >= 2 && matches!(i16::from_be_bytes([frame[0], frame[1]]), 0 | 1);
        if !pipelined {
            queue.drained().await;
        }
        let (bytes, started) = (frame.len(), Instant::now());
        let key = if frame.len() >= 2 { i16::from_be_bytes([frame[0], frame[1]]) } else { -1 };
        let pending = match start(frame.freeze(), broker, host).await {
            Ok(pending) => pending,
            Err(error) => {
                broker.metrics.request_done(key, RequestResult::Rejected, started);
                return Err(error);
            }
        };
        let in_flight = broker.metrics.in_flight();
        queue.push(Queued { pending, bytes, key, started, _reservation: reservation, _in_flight: in_flight });
    }
}

/// Reading part of a request may not take longer than the idle timeout.
async fn within_idle_timeout<T>(
    limits: &ConnectionLimits,
    read: impl Future<Output = Result<T, FrameError>>,
) -> Result<T, ConnectionError> {
    match glommio::timer::timeout(limits.idle_timeout, async { Ok(read.await) }).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ConnectionError::Idle(limits.idle_timeout)),
    }
}

/// Decodes one request frame and runs its ordered stage.
async fn start(mut frame: Bytes, broker: &ShardBroker, host: &str) -> Result<Pending, ConnectionError> {
    if frame.len() < 8 {
        return Err(ConnectionError::ShortHeader(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|()| ConnectionError::UnknownApiKey(raw_key))?;
    let Some(supported) = api::supported(key) else {
        return Err(ConnectionError::UnsupportedVersion { key, version });
    };
    if !(supported.min_version..=supported.max_version).contains(&version) {
        if key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 (which every client can read) with the supported ranges.
            let response = encode_response(correlation_id, 0, 0, &api_versions::unsupported_version())?;
            return Ok(Pending::Done(Some(response)));
        }
        return Err(ConnectionError::UnsupportedVersion { key, version });
    }
    if key == ApiKey::Produce && version < 3 {
        // Advertised from v0 for librdkafka's sake; message formats v0/v1 are not accepted.
        return Err(ConnectionError::UnsupportedVersion { key, version });
    }
    // The header is dropped here: it must hold no handle to the frame (see produce intake).
    let client_id = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| ConnectionError::Malformed { key, version, message: e.to_string() })?
        .client_id
        .map(|c| c.to_string())
        .unwrap_or_default();
    let client = ClientInfo { client_id, host: host.to_string() };
    let client = &client;
    tracing::trace!(?key, version, correlation_id, client_id = %client.client_id, "request");
    let call = Call { frame, key, version, correlation_id };
    let respond = |call: Call| async move {
        match key {
            ApiKey::ApiVersions => call.respond(|_: ApiVersionsRequest| async { api_versions::handle() }).await,
            ApiKey::Metadata => call.respond(|r: MetadataRequest| metadata::handle(broker, r, version)).await,
            ApiKey::CreateTopics => {
                call.respond(|r: CreateTopicsRequest| create_topics::handle(broker, r, version)).await
            }
            ApiKey::DeleteTopics => {
                call.respond(|r: DeleteTopicsRequest| delete_topics::handle(broker, r, version)).await
            }
            ApiKey::ListOffsets => call.respond(|r: ListOffsetsRequest| list_offsets::handle(broker, r, version)).await,
            ApiKey::InitProducerId => {
                call.respond(|r: InitProducerIdRequest| init_producer_id::handle(broker, r, version)).await
            }
            ApiKey::DeleteRecords => {
                call.respond(|r: DeleteRecordsRequest| delete_records::handle(broker, r, version)).await
            }
            ApiKey::OffsetForLeaderEpoch => {
                call.respond(|r: OffsetForLeaderEpochRequest| offset_for_leader_epoch::handle(broker, r, version)).await
            }
            ApiKey::CreatePartitions => {
                call.respond(|r: CreatePartitionsRequest| create_partitions::handle(broker, r, version)).await
            }
            ApiKey::DescribeConfigs => {
                call.respond(|r: DescribeConfigsRequest| describe_configs::handle(broker, r, version)).await
            }
            ApiKey::AlterConfigs => {
                call.respond(|r: AlterConfigsRequest| alter_configs::handle(broker, r, version)).await
            }
            ApiKey::IncrementalAlterConfigs => {
                call.respond(|r: IncrementalAlterConfigsRequest| alter_configs::handle_incremental(broker, r, version))
                    .await
            }
            ApiKey::DescribeCluster => {
                call.respond(|r: DescribeClusterRequest| describe_cluster::handle(broker, r, version)).await
            }
            ApiKey::JoinGroup => {
                call.respond(|r: JoinGroupRequest| join_group::handle(broker, r, version, client)).await
            }
            ApiKey::OffsetCommit => {
                call.respond(|r: OffsetCommitRequest| offset_commit::handle(broker, r, version)).await
            }
            ApiKey::FindCoordinator => {
                call.respond(|r: FindCoordinatorRequest| find_coordinator::handle(broker, r, version)).await
            }
            ApiKey::SyncGroup => call.respond(|r: SyncGroupRequest| sync_group::handle(broker, r, version)).await,
            ApiKey::Heartbeat => call.respond(|r: HeartbeatRequest| heartbeat::handle(broker, r, version)).await,
            ApiKey::LeaveGroup => call.respond(|r: LeaveGroupRequest| leave_group::handle(broker, r, version)).await,
            ApiKey::OffsetFetch => call.respond(|r: OffsetFetchRequest| offset_fetch::handle(broker, r, version)).await,
            ApiKey::DescribeGroups => {
                call.respond(|r: DescribeGroupsRequest| describe_groups::handle(broker, r, version)).await
            }
            ApiKey::ListGroups => call.respond(|r: ListGroupsRequest| list_groups::handle(broker, r, version)).await,
            ApiKey::DeleteGroups => {
                call.respond(|r: DeleteGroupsRequest| delete_groups::handle(broker, r, version)).await
            }
            ApiKey::ConsumerGroupHeartbeat => {
                call.respond(|r: ConsumerGroupHeartbeatRequest| {
                    consumer_group_heartbeat::handle(broker, r, version, client)
                })
                .await
            }
            ApiKey::ConsumerGroupDescribe => {
                call.respond(|r: ConsumerGroupDescribeRequest| consumer_group_describe::handle(broker, r, version))
                    .await
            }
            ApiKey::OffsetDelete => {
                call.respond(|r: OffsetDeleteRequest| offset_delete::handle(broker, r, version)).await
            }
            _ => Err(ConnectionError::UnsupportedVersion { key, version }),
        }
    };
    match key {
        ApiKey::Produce => {
            let body = call.frame.clone();
            let (request, mut call) = call.decode::<ProduceRequest>()?;
            // The body's bytes become the appended batches; the call keeps no handle to them.
            call.frame = Bytes::new();
            Ok(Pending::Produce(call, produce::append(broker, request, version, body).await))
        }
        ApiKey::Fetch => {
            let (request, call) = call.decode::<FetchRequest>()?;
            Ok(Pending::Fetch(call, request))
        }
        _ => respond(call).await.map(|response| Pending::Done(Some(response))),
    }
}

/// One decoded request header and the body bytes after it.
struct Call {
    frame: Bytes,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
}

impl Call {
    /// Decodes the body as `Req`. Bytes after it are ignored, as Kafka ignores them:
    /// librdkafka 2.x writes a null topic array in Metadata v9+ as four bytes instead of one
    /// (confluentinc/librdkafka#5049), and refusing that would cut off every such client
    /// listing all topics.
    fn decode<Req: Decodable>(mut self) -> Result<(Req, Self), ConnectionError> {
        let (key, version) = (self.key, self.version);
        let malformed = |message: String| ConnectionError::Malformed { key, version, message };
        let request = Req::decode(&mut self.frame, version).map_err(|e| malformed(e.to_string()))?;
        if self.frame.has_remaining() {
            tracing::debug!(?key, version, trailing = self.frame.remaining(), "ignoring bytes after the request");
        }
        Ok((request, self))
    }

    fn encode<Resp: Encodable>(&self, response: &Resp) -> Result<BytesMut, ConnectionError> {
        encode_response(self.correlation_id, self.key.response_header_version(self.version), self.version, response)
    }

    /// Decodes the body, runs the handler, encodes its response.
    async fn respond<Req, Resp, F, Fut>(self, handler: F) -> Result<BytesMut, ConnectionError>
    where
        Req: Decodable,
        Resp: Encodable,
        F: FnOnce(Req) -> Fut,
        Fut: Future<Output = Resp>,
    {
        let (request, call) = self.decode::<Req>()?;
        let response = handler(request).await;
        call.encode(&response)
    }
}

fn encode_response<T: Encodable>(
    correlation_id: i32,
    header_version: i16,
    version: i16,
    body: &T,
) -> Result<BytesMut, ConnectionError> {
    let mut out = BytesMut::with_capacity(64);
    out.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, header_version)
        .map_err(encode_error)?;
    body.encode(&mut out, version).map_err(encode_error)?;
    let size = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(out)
}

fn encode_error(error: impl std::fmt::Display) -> ConnectionError {
    ConnectionError::Write(std::io::Error::other(format!("encoding the response failed: {error}")))
}
