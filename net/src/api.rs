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
    SupportedApi {
        key: ApiKey::ApiVersions,
        min_version: 0,
        max_version: 4,
    },
    SupportedApi {
        key: ApiKey::Metadata,
        min_version: 0,
        max_version: 13,
    },
    SupportedApi {
        key: ApiKey::CreateTopics,
        min_version: 2,
        max_version: 7,
    },
    SupportedApi {
        key: ApiKey::DeleteTopics,
        min_version: 1,
        max_version: 6,
    },
];

pub fn supported(key: ApiKey) -> Option<SupportedApi> {
    SUPPORTED.iter().copied().find(|api| api.key == key)
}

/// Kafka error codes used by the connection layer.
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const UNSUPPORTED_VERSION: i16 = 35;
}
