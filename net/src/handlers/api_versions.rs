//! ApiVersions (key 18), v0–v4, with the KIP-511 fallback: a request at a version the broker
//! does not know is answered with a v0 response carrying UNSUPPORTED_VERSION and the
//! supported ranges, so the client can retry at a version both sides speak.
//!
//! Runs on whichever shard owns the connection; it touches no partition state.

use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

use crate::api::{SUPPORTED, error_code};

/// The response body. `error_code` is NONE, or UNSUPPORTED_VERSION for the fallback.
pub fn response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|api| {
            ApiVersion::default()
                .with_api_key(api.key as i16)
                .with_min_version(api.min_version)
                .with_max_version(api.max_version)
        })
        .collect();
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(api_keys).with_throttle_time_ms(0)
}

pub fn handle() -> ApiVersionsResponse {
    response(error_code::NONE)
}

pub fn unsupported_version() -> ApiVersionsResponse {
    response(error_code::UNSUPPORTED_VERSION)
}
