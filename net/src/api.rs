//! The APIs this broker implements and the versions it accepts. Only implemented APIs are
//! advertised in ApiVersions, so a client never discovers a half-working one.

use kafka_protocol::messages::ApiKey;

/// An implemented API and its accepted version range (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedApi {
    pub key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
}

/// Everything the broker implements today.
pub const SUPPORTED: &[SupportedApi] = &[
    // Produce is advertised from v0 (librdkafka needs it for compressed produce) but only
    // v3+ (RecordBatch v2) is accepted.
    SupportedApi { key: ApiKey::Produce, min_version: 0, max_version: 11 },
    SupportedApi { key: ApiKey::Fetch, min_version: 4, max_version: 16 },
    SupportedApi { key: ApiKey::ListOffsets, min_version: 1, max_version: 8 },
    SupportedApi { key: ApiKey::ApiVersions, min_version: 0, max_version: 4 },
    SupportedApi { key: ApiKey::Metadata, min_version: 0, max_version: 13 },
    SupportedApi { key: ApiKey::CreateTopics, min_version: 2, max_version: 7 },
    SupportedApi { key: ApiKey::DeleteTopics, min_version: 1, max_version: 6 },
    SupportedApi { key: ApiKey::DeleteRecords, min_version: 0, max_version: 2 },
    SupportedApi { key: ApiKey::InitProducerId, min_version: 0, max_version: 5 },
    SupportedApi { key: ApiKey::OffsetForLeaderEpoch, min_version: 2, max_version: 4 },
    SupportedApi { key: ApiKey::CreatePartitions, min_version: 0, max_version: 3 },
    SupportedApi { key: ApiKey::DescribeConfigs, min_version: 1, max_version: 4 },
    SupportedApi { key: ApiKey::AlterConfigs, min_version: 0, max_version: 2 },
    SupportedApi { key: ApiKey::IncrementalAlterConfigs, min_version: 0, max_version: 1 },
    SupportedApi { key: ApiKey::DescribeCluster, min_version: 0, max_version: 2 },
    SupportedApi { key: ApiKey::FindCoordinator, min_version: 0, max_version: 6 },
    SupportedApi { key: ApiKey::JoinGroup, min_version: 0, max_version: 9 },
    SupportedApi { key: ApiKey::SyncGroup, min_version: 0, max_version: 5 },
    SupportedApi { key: ApiKey::Heartbeat, min_version: 0, max_version: 4 },
    SupportedApi { key: ApiKey::LeaveGroup, min_version: 0, max_version: 5 },
    SupportedApi { key: ApiKey::OffsetCommit, min_version: 2, max_version: 9 },
    SupportedApi { key: ApiKey::OffsetFetch, min_version: 1, max_version: 9 },
    SupportedApi { key: ApiKey::DescribeGroups, min_version: 0, max_version: 5 },
    SupportedApi { key: ApiKey::ListGroups, min_version: 0, max_version: 5 },
    SupportedApi { key: ApiKey::DeleteGroups, min_version: 0, max_version: 2 },
    SupportedApi { key: ApiKey::OffsetDelete, min_version: 0, max_version: 0 },
    SupportedApi { key: ApiKey::ConsumerGroupHeartbeat, min_version: 0, max_version: 1 },
    SupportedApi { key: ApiKey::ConsumerGroupDescribe, min_version: 0, max_version: 1 },
];

pub fn supported(key: ApiKey) -> Option<SupportedApi> {
    SUPPORTED.iter().copied().find(|api| api.key == key)
}

/// Kafka error codes used by the connection layer.
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const UNSUPPORTED_VERSION: i16 = 35;
}
