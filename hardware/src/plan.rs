//! Shard plan: which CPUs run shards, how much memory each gets, which data dir each uses.
//!
//! A pure function of a probed [`Machine`]; the broker prints the plan (its `Display`) at start
//! and the engine pins one shard per planned CPU.
//!
//! Rules:
//! - Only online, non-isolated CPUs are candidates (isolated CPUs were set aside by the
//!   operator with `isolcpus=`; offline CPUs cannot run anything).
//! - Without an explicit core count, every candidate CPU (every hardware thread) runs a shard,
//!   except on machines with more than 8 physical cores, where the first core of each socket
//!   (with its SMT siblings) is reserved for interrupts and the OS: the NIC and housekeeping
//!   then do not steal time from a shard's reactor. Small machines cannot spare a core.
//! - With an explicit count nothing is reserved; CPUs are taken one thread per physical core
//!   first (lowest CPU ids first), second SMT threads only after that, so fewer shards do not
//!   share cores. A count above the candidates is clamped, with a note.
//! - Memory: the OS keeps 10 % of total memory, at least 1 GiB and at most half; the rest is
//!   split evenly between shards. With several NUMA nodes each shard's share is computed from its
//!   own node's memory and the smallest share is used for all, so every shard fits in local
//!   memory.
//! - Data dirs: a shard uses a data dir whose disk is on its NUMA node when there is one,
//!   round-robin among them; otherwise round-robin among all data dirs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::probe::Machine;
use crate::sysfs::format_cpu_list;

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Above this many physical cores, one core per socket is reserved for IRQs and the OS.
pub const CORES_RESERVE_THRESHOLD: usize = 8;

/// Where shards run and what they get.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardPlan {
    /// One shard per CPU, in shard order.
    pub shard_cpus: Vec<usize>,
    /// CPUs deliberately left to interrupts and the OS.
    pub reserved_cpus: Vec<usize>,
    /// Memory budget of each shard (caches, buffers); 0 if total memory is unknown.
    pub memory_per_shard_bytes: u64,
    /// Memory left to the kernel, page cache of other processes, and everything else.
    pub memory_reserved_bytes: u64,
    pub shards: Vec<ShardAssignment>,
    /// Decisions the operator should know about (clamping, fallbacks).
    pub notes: Vec<String>,
}

/// One shard's placement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardAssignment {
    pub shard: usize,
    pub cpu: usize,
    pub numa_node: Option<usize>,
    pub data_dir: Option<PathBuf>,
}

/// Plans the shards of `machine`; `requested_cores` is the operator's explicit shard count.
pub fn plan_shards(machine: &Machine, requested_cores: Option<usize>) -> ShardPlan {
    let mut notes = Vec::new();
    let mut candidates: Vec<&crate::probe::Cpu> =
        machine.cpus.list.iter().filter(|cpu| cpu.online && !cpu.isolated).collect();
    candidates.sort_by_key(|cpu| cpu.id);
    let fallback_cpu = crate::probe::Cpu { online: true, siblings: vec![0], ..Default::default() };
    if candidates.is_empty() {
        notes.push("no usable CPU found in the probe; planning one shard on CPU 0".to_string());
        candidates.push(&fallback_cpu);
    }
    let core_of = |cpu: &crate::probe::Cpu| (cpu.socket.unwrap_or(0), cpu.core.unwrap_or(cpu.id));
    let cores: BTreeSet<(usize, usize)> = candidates.iter().map(|cpu| core_of(cpu)).collect();

    let (shard_cpus, reserved_cpus) = match requested_cores {
        Some(requested) => {
            let mut wanted = requested;
            if wanted == 0 {
                notes.push("0 cores requested; using 1".to_string());
                wanted = 1;
            }
            if wanted > candidates.len() {
                notes.push(format!(
                    "{requested} cores requested but only {} usable CPUs; using {}",
                    candidates.len(),
                    candidates.len()
                ));
                wanted = candidates.len();
            }
            // Thread rank within its core: 0 for the first (lowest-id) sibling.
            let mut ranked: Vec<(usize, usize)> = candidates
                .iter()
                .map(|cpu| {
                    let rank =
                        candidates.iter().filter(|other| core_of(other) == core_of(cpu) && other.id < cpu.id).count();
                    (rank, cpu.id)
                })
                .collect();
            ranked.sort_unstable();
            let mut chosen: Vec<usize> = ranked.iter().take(wanted).map(|&(_, id)| id).collect();
            chosen.sort_unstable();
            (chosen, Vec::new())
        }
        None if cores.len() > CORES_RESERVE_THRESHOLD => {
            let mut first_core_of_socket: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
            for cpu in &candidates {
                first_core_of_socket.entry(cpu.socket.unwrap_or(0)).or_insert(core_of(cpu));
            }
            let reserved_cores: BTreeSet<(usize, usize)> = first_core_of_socket.into_values().collect();
            let (reserved, shards): (Vec<&&crate::probe::Cpu>, Vec<&&crate::probe::Cpu>) =
                candidates.iter().partition(|cpu| reserved_cores.contains(&core_of(cpu)));
            (shards.iter().map(|cpu| cpu.id).collect(), reserved.iter().map(|cpu| cpu.id).collect())
        }
        None => (candidates.iter().map(|cpu| cpu.id).collect(), Vec::new()),
    };
    if !machine.cpus.isolated_list.is_empty() {
        notes.push(format!("isolated CPUs {} left alone", format_cpu_list(&machine.cpus.isolated_list)));
    }

    let node_of = |cpu: usize| machine.cpus.list.iter().find(|c| c.id == cpu).and_then(|c| c.numa_node);
    let (memory_per_shard_bytes, memory_reserved_bytes) = plan_memory(machine, &shard_cpus, &node_of, &mut notes);
    let shards = assign_data_dirs(machine, &shard_cpus, &node_of);
    ShardPlan { shard_cpus, reserved_cpus, memory_per_shard_bytes, memory_reserved_bytes, shards, notes }
}

fn plan_memory(
    machine: &Machine,
    shard_cpus: &[usize],
    node_of: &dyn Fn(usize) -> Option<usize>,
    notes: &mut Vec<String>,
) -> (u64, u64) {
    let Some(total) = machine.memory_bytes.filter(|&total| total > 0) else {
        notes.push("total memory unknown; memory per shard left to the engine default".into());
        return (0, 0);
    };
    let reserved = (total / 10).max(GIB).min(total / 2);
    let usable = total - reserved;
    let shard_count = shard_cpus.len().max(1) as u64;
    let mut per_shard = usable / shard_count;
    if machine.numa_nodes.len() > 1 {
        let mut shards_per_node: BTreeMap<Option<usize>, u64> = BTreeMap::new();
        for &cpu in shard_cpus {
            *shards_per_node.entry(node_of(cpu)).or_default() += 1;
        }
        for (node, count) in shards_per_node {
            let node_memory =
                node.and_then(|id| machine.numa_nodes.iter().find(|n| n.id == id)).and_then(|n| n.memory_bytes);
            if let Some(node_memory) = node_memory {
                // The node keeps the same fraction for the OS as the machine does.
                let node_usable = (node_memory as u128 * usable as u128 / total as u128) as u64;
                per_shard = per_shard.min(node_usable / count);
            }
        }
    }
    ((per_shard / MIB) * MIB, reserved)
}

fn assign_data_dirs(
    machine: &Machine,
    shard_cpus: &[usize],
    node_of: &dyn Fn(usize) -> Option<usize>,
) -> Vec<ShardAssignment> {
    let mut data_dirs: Vec<(PathBuf, Option<usize>)> = Vec::new();
    for disk in &machine.disks {
        for mount in &disk.mounts {
            data_dirs.push((mount.data_dir.clone(), disk.numa_node));
        }
    }
    for unresolved in &machine.unresolved_data_dirs {
        data_dirs.push((unresolved.data_dir.clone(), None));
    }
    let mut next_in_node: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    shard_cpus
        .iter()
        .enumerate()
        .map(|(shard, &cpu)| {
            let node = node_of(cpu);
            let local: Vec<&PathBuf> = data_dirs
                .iter()
                .filter(|(_, dir_node)| node.is_some() && *dir_node == node)
                .map(|(dir, _)| dir)
                .collect();
            let pool: Vec<&PathBuf> =
                if local.is_empty() { data_dirs.iter().map(|(dir, _)| dir).collect() } else { local };
            let index = next_in_node.entry(node).or_default();
            let data_dir = (!pool.is_empty()).then(|| pool[*index % pool.len()].clone());
            *index += 1;
            ShardAssignment { shard, cpu, numa_node: node, data_dir }
        })
        .collect()
}

/// `1.5 GiB`, `512 MiB`, `4 KiB`, `100 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if value.fract() == 0.0 { format!("{value:.0} {unit}") } else { format!("{value:.1} {unit}") };
        }
    }
    format!("{bytes} B")
}

impl fmt::Display for ShardPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard plan: {} shards on CPUs {}", self.shard_cpus.len(), format_cpu_list(&self.shard_cpus))?;
        if !self.reserved_cpus.is_empty() {
            write!(f, " (CPUs {} reserved for IRQs and the OS)", format_cpu_list(&self.reserved_cpus))?;
        }
        writeln!(f)?;
        if self.memory_per_shard_bytes > 0 {
            writeln!(
                f,
                "memory: {} per shard, {} left to the OS",
                format_bytes(self.memory_per_shard_bytes),
                format_bytes(self.memory_reserved_bytes)
            )?;
        }
        let mut by_node: BTreeMap<Option<usize>, (Vec<usize>, BTreeSet<String>)> = BTreeMap::new();
        for shard in &self.shards {
            let entry = by_node.entry(shard.numa_node).or_default();
            entry.0.push(shard.cpu);
            if let Some(dir) = &shard.data_dir {
                entry.1.insert(dir.display().to_string());
            }
        }
        for (node, (cpus, dirs)) in by_node {
            let node = node.map_or("no NUMA node".to_string(), |id| format!("node {id}"));
            let dirs: Vec<String> = dirs.into_iter().collect();
            let dirs = if dirs.is_empty() { "no data dir".to_string() } else { dirs.join(", ") };
            writeln!(f, "  {node}: {} shards (CPUs {}), data dirs: {dirs}", cpus.len(), format_cpu_list(&cpus))?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(format_bytes(1536 * MIB), "1.5 GiB");
        assert_eq!(format_bytes(512 * MIB), "512 MiB");
        assert_eq!(format_bytes(100), "100 B");
    }
}
