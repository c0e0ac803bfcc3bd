//! One client connection: read a frame, decode its header, dispatch to the API's handler,
//! write the response; responses go back in request order. Any framing or decoding failure
//! closes this connection only (as Kafka does for requests it cannot parse); the shard keeps
//! serving everyone else.
//!
//! Runs on the shard that accepted the connection.

use std::time::Duration;

use std::future::Future;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteRecordsRequest, DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest, FetchRequest,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, ProduceRequest, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api;
use crate::broker::ShardBroker;
use crate::frame::{self, FrameError};
use crate::handlers::{
    alter_configs, api_versions, create_partitions, create_topics, delete_records, delete_topics, describe_cluster,
    describe_configs, fetch, init_producer_id, list_offsets, metadata, offset_for_leader_epoch, produce,
};

/// The limits of one connection (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Largest request frame accepted [`socket.request.max.bytes`, 100 MiB].
    pub max_frame_bytes: usize,
    /// A connection silent this long is closed [`connections.max.idle.ms`, 10 min].
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_frame_bytes: 100 << 20, idle_timeout: Duration::from_secs(600) }
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
    #[error("write failed: {0}")]
    Write(std::io::Error),
}

/// Serves requests on `stream` until the peer closes it (Ok) or the broker must (Err).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    limits: &ConnectionLimits,
    broker: &ShardBroker,
) -> Result<(), ConnectionError> {
    loop {
        let read = frame::read_frame(stream, limits.max_frame_bytes);
        let frame = match glommio::timer::timeout(limits.idle_timeout, async { Ok(read.await) }).await {
            Ok(result) => result?,
            Err(_) => return Err(ConnectionError::Idle(limits.idle_timeout)),
        };
        let Some(frame) = frame else { return Ok(()) };
        if let Some(response) = handle(frame.freeze(), broker).await? {
            stream.write_all(&response).await.map_err(ConnectionError::Write)?;
        }
    }
}

/// Decodes one request frame and returns the response frame (size prefix included), or
/// nothing for a request that gets no response (Produce with `acks=0`).
pub async fn handle(mut frame: Bytes, broker: &ShardBroker) -> Result<Option<BytesMut>, ConnectionError> {
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
            return encode_response(correlation_id, 0, 0, &api_versions::unsupported_version()).map(Some);
        }
        return Err(ConnectionError::UnsupportedVersion { key, version });
    }
    if key == ApiKey::Produce && version < 3 {
        // Advertised from v0 for librdkafka's sake; message formats v0/v1 are not accepted.
        return Err(ConnectionError::UnsupportedVersion { key, version });
    }
    RequestHeader::decode(&mut frame, key.request_header_version(version)).map_err(|e| ConnectionError::Malformed {
        key,
        version,
        message: e.to_string(),
    })?;
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
            ApiKey::Fetch => call.respond(|r: FetchRequest| fetch::handle(broker, r, version)).await,
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
            _ => Err(ConnectionError::UnsupportedVersion { key, version }),
        }
    };
    if key == ApiKey::Produce {
        let (request, call) = call.decode::<ProduceRequest>()?;
        let (response, send) = produce::handle(broker, request, version).await;
        return if send { call.encode(&response).map(Some) } else { Ok(None) };
    }
    respond(call).await.map(Some)
}

/// One decoded request header and the body bytes after it.
struct Call {
    frame: Bytes,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
}

impl Call {
    /// Decodes the body as `Req`, which must use all of it.
    fn decode<Req: Decodable>(mut self) -> Result<(Req, Self), ConnectionError> {
        let (key, version) = (self.key, self.version);
        let malformed = |message: String| ConnectionError::Malformed { key, version, message };
        let request = Req::decode(&mut self.frame, version).map_err(|e| malformed(e.to_string()))?;
        if self.frame.has_remaining() {
            return Err(malformed(format!("{} trailing bytes", self.frame.remaining())));
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
