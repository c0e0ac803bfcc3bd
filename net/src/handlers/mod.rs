//! One module per Kafka API. Each handler takes the decoded request and returns the response
//! body; the connection layer owns framing, headers and ordering.

pub mod api_versions;
