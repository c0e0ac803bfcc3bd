//! Hardware probing, device measurement and shard planning.
//!
//! - [`mod@probe`]: what the machine is (CPU topology, NUMA, memory, disks behind the data dirs,
//!   NICs, limits), read from an injectable sysfs/procfs root.
//! - [`iotune`]: what the data dir's device can do (bandwidth, IOPS, fdatasync latency, knee),
//!   measured with io_uring and O_DIRECT, saved as `DATA_DIR/io-profile.json`.
//! - [`plan`]: which CPUs run shards and how much memory each gets.
//! - [`tune`]: which kernel settings matter, their values, and fixing what can be fixed.
//! - [`cli`]: the `corelog hardware probe|iotune|tune` subcommands.

pub mod cli;
pub mod iotune;
pub mod plan;
pub mod probe;
pub mod sysfs;
pub mod tune;

pub use iotune::IoProfile;
pub use plan::{ShardPlan, plan_shards};
pub use probe::{Machine, ProbeError, probe};
