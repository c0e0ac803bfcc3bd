//! Broker-to-broker replication and the controller (brief §6). Nothing here yet beyond the crate boundary.
