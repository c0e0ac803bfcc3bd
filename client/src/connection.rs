//! One connection to one broker: requests are written in the order they are made and may be
//! many in flight at once (pipelined); a reader task hands each response to the request of
//! the same correlation id. Versions are negotiated once with ApiVersions: every request
//! goes out at the highest version both sides know.
//!
//! Owner: the executor thread that connected (glommio, not `Send`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::{mpsc, oneshot};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::Error;

/// The largest response frame accepted (a broker's fetch responses stay far below).
const RESPONSE_BYTES_MAX: usize = 256 << 20;

type Waiter = oneshot::Sender<Result<Bytes, Error>>;

pub struct Connection {
    address: String,
    client_id: StrBytes,
    timeout: Duration,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Rc<RefCell<HashMap<i32, Waiter>>>,
    /// Set when the connection failed: every later request fails at once.
    broken: Rc<Cell<bool>>,
    next_correlation_id: Cell<i32>,
    /// The broker's version range per API key.
    versions: RefCell<BTreeMap<i16, (i16, i16)>>,
}

impl Connection {
    /// Connects and negotiates versions.
    pub async fn connect(address: &str, client_id: &str, timeout: Duration) -> Result<Rc<Self>, Error> {
        let connecting = TcpStream::connect(address);
        let stream = with_timeout(timeout, async { connecting.await.map_err(|e| Error::io(address, e.into())) })
            .await
            .map_err(|_| Error::Timeout { address: address.to_string(), what: "connecting".into() })??;
        stream.set_nodelay(true).map_err(|e| Error::io(address, e.into()))?;
        let fd = stream.as_raw_fd();
        let (reader, writer) = futures_lite::io::split(stream);
        let (frames, outgoing) = mpsc::unbounded();
        let connection = Rc::new(Self {
            address: address.to_string(),
            client_id: StrBytes::from_string(client_id.to_string()),
            timeout,
            frames,
            waiting: Rc::new(RefCell::new(HashMap::new())),
            broken: Rc::new(Cell::new(false)),
            next_correlation_id: Cell::new(0),
            versions: RefCell::new(BTreeMap::new()),
        });
        glommio::spawn_local(write_frames(writer, outgoing, Rc::clone(&connection.broken))).detach();
        glommio::spawn_local(read_frames(
            reader,
            fd,
            connection.address.clone(),
            Rc::clone(&connection.waiting),
            Rc::clone(&connection.broken),
        ))
        .detach();
        connection.negotiate().await?;
        Ok(connection)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    /// ApiVersions at v3 (v0 if the broker is older: it answers UNSUPPORTED_VERSION with its
    /// own ranges in a v0 body).
    async fn negotiate(&self) -> Result<(), Error> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("corelog"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response: ApiVersionsResponse = match self.send_at(request.clone(), 3).await {
            Ok(response) if response.error_code == 0 => response,
            _ => self.send_at(request, 0).await?,
        };
        if response.error_code != 0 {
            return Err(Error::kafka("ApiVersions", response.error_code, None));
        }
        *self.versions.borrow_mut() =
            response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(())
    }

    /// The highest version of `R` both sides support.
    pub fn version<R: Request>(&self) -> Result<i16, Error> {
        let (broker_min, broker_max) = self
            .versions
            .borrow()
            .get(&R::KEY)
            .copied()
            .ok_or_else(|| Error::Unsupported { address: self.address.clone(), api: api_name(R::KEY) })?;
        let ours = R::VERSIONS;
        let version = broker_max.min(ours.max);
        if version < broker_min.max(ours.min) {
            return Err(Error::Unsupported { address: self.address.clone(), api: api_name(R::KEY) });
        }
        Ok(version)
    }

    /// Sends `request` at the negotiated version and waits for its response.
    pub async fn send<R: Request>(&self, request: R) -> Result<R::Response, Error> {
        let version = self.version::<R>()?;
        self.send_at(request, version).await
    }

    /// Writes `request` now (before any request made later) and returns the wait for its
    /// response.
    pub fn send_now<R: Request + 'static>(
        self: &Rc<Self>,
        request: R,
    ) -> Result<impl std::future::Future<Output = Result<R::Response, Error>> + 'static, Error> {
        let version = self.version::<R>()?;
        let response = self.start(&request, version)?;
        let this = Rc::clone(self);
        Ok(async move { this.finish::<R>(response, version, this.timeout).await })
    }

    /// Sends `request` at `version` and waits for its response (bounded by the timeout).
    pub async fn send_at<R: Request>(&self, request: R, version: i16) -> Result<R::Response, Error> {
        let response = self.start(&request, version)?;
        self.finish::<R>(response, version, self.timeout).await
    }

    /// Like [`Connection::send`], for a request the broker may hold longer than the
    /// connection's timeout (JoinGroup waits for a rebalance): waits up to `limit`.
    pub async fn send_within<R: Request>(&self, request: R, limit: Duration) -> Result<R::Response, Error> {
        let version = self.version::<R>()?;
        let response = self.start(&request, version)?;
        self.finish::<R>(response, version, limit).await
    }

    async fn finish<R: Request>(
        &self,
        response: oneshot::Receiver<Result<Bytes, Error>>,
        version: i16,
        limit: Duration,
    ) -> Result<R::Response, Error> {
        let mut body = with_timeout(limit, async { response.await.unwrap_or(Err(Error::Closed)) })
            .await
            .map_err(|_| Error::Timeout { address: self.address.clone(), what: api_name(R::KEY).into() })??;
        let header_version = <R::Response as HeaderVersion>::header_version(version);
        ResponseHeader::decode(&mut body, header_version).map_err(|e| self.malformed(R::KEY, e))?;
        let decoded = R::Response::decode(&mut body, version).map_err(|e| self.malformed(R::KEY, e))?;
        Ok(decoded)
    }

    /// Writes a request the broker does not answer (Produce with acks=0).
    pub fn send_oneway<R: Request>(&self, request: &R) -> Result<(), Error> {
        let version = self.version::<R>()?;
        self.write(request, version, None)
    }

    /// Writes the request; the receiver gets the response frame (header and body).
    fn start<R: Request>(&self, request: &R, version: i16) -> Result<oneshot::Receiver<Result<Bytes, Error>>, Error> {
        let (tx, rx) = oneshot::channel();
        self.write(request, version, Some(tx))?;
        Ok(rx)
    }

    fn write<R: Request>(&self, request: &R, version: i16, waiter: Option<Waiter>) -> Result<(), Error> {
        if self.broken.get() {
            return Err(Error::Closed);
        }
        let correlation_id = self.next_correlation_id.get();
        self.next_correlation_id.set(correlation_id.wrapping_add(1));
        let encoding = |e: &dyn std::fmt::Display| Error::Encode { api: api_name(R::KEY), reason: e.to_string() };
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let header_version = R::header_version(version);
        // Sized up front: a produce request carries its batches, and a growing buffer would
        // copy them again at every doubling.
        let capacity = 4
            + header.compute_size(header_version).map_err(|e| encoding(&e))?
            + request.compute_size(version).map_err(|e| encoding(&e))?;
        let mut frame = BytesMut::with_capacity(capacity);
        frame.extend_from_slice(&[0; 4]);
        header.encode(&mut frame, header_version).map_err(|e| encoding(&e))?;
        request.encode(&mut frame, version).map_err(|e| encoding(&e))?;
        let size = i32::try_from(frame.len() - 4).map_err(|_| Error::Encode {
            api: api_name(R::KEY),
            reason: "the request is larger than a frame holds".into(),
        })?;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        if let Some(waiter) = waiter {
            self.waiting.borrow_mut().insert(correlation_id, waiter);
        }
        if self.frames.unbounded_send(Vec::from(frame)).is_err() {
            self.waiting.borrow_mut().remove(&correlation_id);
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn malformed(&self, key: i16, error: impl std::fmt::Display) -> Error {
        Error::Malformed { address: self.address.clone(), api: api_name(key), reason: error.to_string() }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Ends the writer, which closes the socket's sending side; the broker then closes.
        self.frames.close_channel();
    }
}

async fn write_frames(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    broken: Rc<Cell<bool>>,
) {
    while let Some(frame) = frames.next().await {
        if writer.write_all(&frame).await.is_err() {
            broken.set(true);
            break;
        }
    }
    let _ = writer.close().await;
}

/// Reads response frames off the socket (`fd` is the socket of `reader`).
async fn read_frames(
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    fd: RawFd,
    address: String,
    waiting: Rc<RefCell<HashMap<i32, Waiter>>>,
    broken: Rc<Cell<bool>>,
) {
    let failure = loop {
        let mut size = [0u8; 4];
        if let Err(error) = reader.read_exact(&mut size).await {
            break Error::io(&address, error);
        }
        let size = i32::from_be_bytes(size);
        let Some(size) = usize::try_from(size).ok().filter(|s| (4..=RESPONSE_BYTES_MAX).contains(s)) else {
            break Error::Malformed {
                address: address.clone(),
                api: "response",
                reason: format!("frame of {size} bytes"),
            };
        };
        let mut frame = Vec::with_capacity(size);
        if let Err(error) = read_into_capacity(&mut reader, fd, &mut frame, size).await {
            break Error::io(&address, error);
        }
        let correlation_id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let Some(waiter) = waiting.borrow_mut().remove(&correlation_id) else {
            break Error::Malformed {
                address: address.clone(),
                api: "response",
                reason: format!("correlation id {correlation_id} matches no request"),
            };
        };
        let _ = waiter.send(Ok(Bytes::from(frame)));
    };
    broken.set(true);
    for (_, waiter) in waiting.borrow_mut().drain() {
        let _ = waiter.send(Err(failure.clone()));
    }
}

/// Bytes zeroed for a read that has to wait for data (see [`read_into_capacity`]).
const WAIT_READ_BYTES: usize = 64 << 10;

/// Fills `frame` (empty, with capacity for `size` bytes) from the socket. Received bytes go
/// straight into the vector's spare capacity with non-blocking `recv(2)`, so a large
/// response is not zeroed first (that cost as much as the kernel's copy); only when the
/// socket is empty does a read through the stream wait for data, into a small zeroed
/// window.
async fn read_into_capacity(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    fd: RawFd,
    frame: &mut Vec<u8>,
    size: usize,
) -> std::io::Result<()> {
    assert!(frame.is_empty() && frame.capacity() >= size);
    while frame.len() < size {
        let filled = frame.len();
        let spare = &mut frame.spare_capacity_mut()[..size - filled];
        // SAFETY: recv writes at most `spare.len()` bytes into the vector's own spare
        // capacity, which outlives the call.
        let received = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
        if received > 0 {
            // SAFETY: the kernel initialised `received` bytes right after the length.
            unsafe { frame.set_len(filled + received as usize) };
            continue;
        }
        let error = std::io::Error::last_os_error();
        match (received, error.kind()) {
            (0, _) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            (_, std::io::ErrorKind::WouldBlock) => {
                frame.resize(filled + (size - filled).min(WAIT_READ_BYTES), 0);
                let read = reader.read(&mut frame[filled..]).await?;
                frame.truncate(filled + read);
                if read == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            (_, std::io::ErrorKind::Interrupted) => {}
            _ => return Err(error),
        }
    }
    Ok(())
}

/// `work`, or Err(()) if it takes longer than `limit`.
pub(crate) async fn with_timeout<T>(limit: Duration, work: impl std::future::Future<Output = T>) -> Result<T, ()> {
    futures_lite::future::or(async { Ok(work.await) }, async {
        glommio::timer::sleep(limit).await;
        Err(())
    })
    .await
}

/// The API's name as Kafka spells it (`CreateTopics`).
pub fn api_name(key: i16) -> &'static str {
    match ApiKey::try_from(key) {
        Ok(key) => api_key_name(key),
        Err(()) => "unknown API",
    }
}

fn api_key_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::DeleteGroups => "DeleteGroups",
        _ => "a Kafka API",
    }
}
