//! One module per Kafka API. Each handler takes the decoded request and returns the response
//! body; the connection layer owns framing, headers and ordering.

pub mod api_versions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod fetch;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
