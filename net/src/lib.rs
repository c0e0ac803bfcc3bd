//! Kafka wire protocol for corelog (issue 3). Nothing here yet beyond the crate boundary.
