//! Machine probe: CPU topology, NUMA, memory, the disks behind the data dirs, NICs and limits.
//!
//! Everything is read from an injectable root (`/` in production, a captured fixture tree in
//! tests): `root/sys/...` and `root/proc/...`. The only facts not read from the root are the
//! process resource limits (`getrlimit`), which are passed in as [`ProcessLimits`] so tests can
//! inject them too. A missing or unreadable file makes the matching field `None` (or a list
//! empty); it never fails the probe, because VMs and containers hide many attributes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sysfs::{
    self, InterruptLine, MountInfo, link_name, list_dir, parse_cache_size, parse_choices, parse_cpu_list,
    parse_interrupts, parse_meminfo, parse_mountinfo, parse_selected, read_i64, read_trimmed, read_u64,
};

/// Everything the shard planner, the tuner and the operator need to know about the machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpus: CpuTopology,
    /// Total memory (`MemTotal` of `/proc/meminfo`).
    pub memory_bytes: Option<u64>,
    /// NUMA nodes from `/sys/devices/system/node`; empty when the kernel exposes none.
    pub numa_nodes: Vec<NumaNode>,
    pub memory: MemorySettings,
    /// One entry per block device backing at least one data dir.
    pub disks: Vec<Disk>,
    /// Data dirs whose block device could not be found, with the reason.
    pub unresolved_data_dirs: Vec<UnresolvedDataDir>,
    /// Physical network interfaces (entries of `/sys/class/net` with a `device` link).
    pub nics: Vec<Nic>,
    pub clocksource: Clocksource,
    pub limits: Limits,
}

/// CPU topology as the kernel reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuTopology {
    /// Number of online CPUs (logical CPUs, i.e. hardware threads).
    pub online: usize,
    pub online_list: Vec<usize>,
    pub offline_list: Vec<usize>,
    /// CPUs removed from the scheduler with `isolcpus=` (`/sys/devices/system/cpu/isolated`).
    pub isolated_list: Vec<usize>,
    /// Distinct physical packages among online CPUs.
    pub sockets: usize,
    /// Distinct physical cores (socket, core id) among online CPUs.
    pub cores: usize,
    /// Largest number of online hardware threads sharing one core (1 = SMT off or absent).
    pub threads_per_core: usize,
    /// `/sys/devices/system/cpu/smt/active`.
    pub smt_active: Option<bool>,
    /// `/sys/devices/system/cpu/smt/control` (`on`, `off`, `forceoff`, `notsupported`).
    pub smt_control: Option<String>,
    /// The frequency governor shared by all online CPUs, `mixed` if they differ, `None` if the
    /// kernel exposes no cpufreq (common in VMs).
    pub governor: Option<String>,
    pub caches: Vec<Cache>,
    pub list: Vec<Cpu>,
}

/// One logical CPU.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cpu {
    pub id: usize,
    pub online: bool,
    pub isolated: bool,
    /// `topology/physical_package_id` (absent for offline CPUs).
    pub socket: Option<usize>,
    /// `topology/core_id`, unique only within a socket.
    pub core: Option<usize>,
    pub numa_node: Option<usize>,
    /// `topology/thread_siblings_list`, including this CPU.
    pub siblings: Vec<usize>,
    pub governor: Option<String>,
    pub max_frequency_khz: Option<u64>,
}

/// A cache level, summarised over all online CPUs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cache {
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    pub kind: String,
    pub size_bytes: Option<u64>,
    /// Number of distinct instances (e.g. one L3 per socket).
    pub instances: usize,
    pub cpus_per_instance: usize,
}

/// One NUMA node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NumaNode {
    pub id: usize,
    pub cpus: Vec<usize>,
    pub memory_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
}

/// Memory-management settings that matter for a broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemorySettings {
    /// `/sys/kernel/mm/transparent_hugepage/enabled` (the selected value).
    pub transparent_hugepages: Option<String>,
    /// `/sys/kernel/mm/transparent_hugepage/defrag` (the selected value).
    pub transparent_hugepages_defrag: Option<String>,
    pub swappiness: Option<u64>,
    pub huge_page_size_bytes: Option<u64>,
    pub huge_pages_total: Option<u64>,
    pub huge_pages_free: Option<u64>,
    /// Reserved huge pages per page size (`/sys/kernel/mm/hugepages/hugepages-<size>kB`).
    pub huge_pages_by_size_kb: BTreeMap<u64, u64>,
}

/// What kind of block device backs a data dir (from its kernel name).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    Nvme,
    Virtio,
    Scsi,
    Xen,
    Loop,
    DeviceMapper,
    Md,
    Other,
}

impl DiskKind {
    /// Classifies a kernel block device name (`nvme0n1`, `vda`, `sdb`, `loop3`, `dm-0`, `md0`).
    pub fn from_name(name: &str) -> DiskKind {
        if name.starts_with("nvme") {
            DiskKind::Nvme
        } else if name.starts_with("vd") {
            DiskKind::Virtio
        } else if name.starts_with("xvd") {
            DiskKind::Xen
        } else if name.starts_with("sd") {
            DiskKind::Scsi
        } else if name.starts_with("loop") {
            DiskKind::Loop
        } else if name.starts_with("dm-") {
            DiskKind::DeviceMapper
        } else if name.starts_with("md") {
            DiskKind::Md
        } else {
            DiskKind::Other
        }
    }
}

/// A block device backing one or more data dirs. Queue attributes are those of the whole disk
/// (a partition has no queue of its own).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Disk {
    /// Whole-disk kernel name (`nvme0n1`, `vda`, `loop0`).
    pub device: String,
    /// The partition actually mounted, if the data dir sits on one (`nvme0n1p2`).
    pub partition: Option<String>,
    /// `major:minor` of the mounted device (the partition if there is one).
    pub major_minor: String,
    pub kind: DiskKind,
    pub nvme: bool,
    pub model: Option<String>,
    pub size_bytes: Option<u64>,
    pub logical_block_size: Option<u64>,
    pub physical_block_size: Option<u64>,
    pub rotational: Option<bool>,
    pub scheduler: Option<String>,
    pub schedulers_available: Vec<String>,
    /// `queue/nr_requests`: the block layer's queue depth per hardware queue.
    pub nr_requests: Option<u64>,
    /// Number of hardware (blk-mq) queues, `mq/` entries.
    pub hardware_queues: Option<usize>,
    /// `queue/nomerges`: 0 merge, 1 simple merges only, 2 no merges.
    pub nomerges: Option<u64>,
    /// `queue/write_cache`: `write back` (volatile cache, flushes needed) or `write through`.
    pub write_cache: Option<String>,
    /// `queue/fua`: the device honours Force Unit Access writes.
    pub fua: Option<bool>,
    /// `queue/discard_max_bytes` > 0.
    pub discard_supported: Option<bool>,
    pub numa_node: Option<usize>,
    /// For loop devices, the file behind them.
    pub backing_file: Option<PathBuf>,
    /// For device-mapper and md devices, the devices below them.
    pub slaves: Vec<String>,
    pub irqs: Vec<Irq>,
    pub mounts: Vec<DataDirMount>,
}

/// A data dir and the mount it lives on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataDirMount {
    pub data_dir: PathBuf,
    pub mount_point: PathBuf,
    pub filesystem: String,
}

/// A data dir whose device was not found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnresolvedDataDir {
    pub data_dir: PathBuf,
    pub reason: String,
}

/// An interrupt line and where it may run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Irq {
    pub irq: u32,
    pub name: String,
    /// `/proc/irq/N/smp_affinity_list`.
    pub affinity: Option<Vec<usize>>,
    /// `/proc/irq/N/effective_affinity_list` (where it really fires).
    pub effective_affinity: Option<Vec<usize>>,
}

/// A physical network interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Nic {
    pub name: String,
    /// The `device` link target (`0000:3b:00.0`, `virtio2`).
    pub device: Option<String>,
    pub driver: Option<String>,
    /// Link speed; `None` when the link is down or the driver reports `-1` (virtio).
    pub speed_mbps: Option<u64>,
    pub mtu: Option<u64>,
    pub operstate: Option<String>,
    pub rx_queues: usize,
    pub tx_queues: usize,
    pub numa_node: Option<usize>,
    pub irqs: Vec<Irq>,
}

/// The kernel clock source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Clocksource {
    pub current: Option<String>,
    pub available: Vec<String>,
}

/// A soft/hard resource limit; `None` means unlimited (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Process resource limits (not part of the sysfs root; see [`ProcessLimits::current`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessLimits {
    /// `RLIMIT_NOFILE`.
    pub open_files: Rlimit,
    /// `RLIMIT_MEMLOCK` in bytes.
    pub locked_memory_bytes: Rlimit,
}

impl ProcessLimits {
    /// Reads this process's limits with `getrlimit`. A failing call (it cannot fail for these
    /// resources on Linux) is reported as a zero limit rather than hidden.
    pub fn current() -> ProcessLimits {
        ProcessLimits {
            open_files: get_rlimit(libc::RLIMIT_NOFILE),
            locked_memory_bytes: get_rlimit(libc::RLIMIT_MEMLOCK),
        }
    }
}

fn get_rlimit(resource: libc::__rlimit_resource_t) -> Rlimit {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    if rc != 0 {
        return Rlimit { soft: Some(0), hard: Some(0) };
    }
    let value = |raw: libc::rlim_t| (raw != libc::RLIM_INFINITY).then_some(raw);
    Rlimit { soft: value(limit.rlim_cur), hard: value(limit.rlim_max) }
}

/// System-wide and process limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub open_files: Rlimit,
    pub locked_memory_bytes: Rlimit,
    /// `/proc/sys/fs/nr_open`: the ceiling for the open-files hard limit.
    pub nr_open: Option<u64>,
    /// `/proc/sys/fs/aio-max-nr`.
    pub aio_max_nr: Option<u64>,
    /// `/proc/sys/fs/aio-nr` (AIO contexts in use).
    pub aio_nr: Option<u64>,
    /// `/proc/sys/kernel/io_uring_disabled`: 0 enabled, 1 only for `io_uring_group`, 2 disabled.
    /// Absent on kernels before 6.6, where io_uring is always enabled if compiled in.
    pub io_uring_disabled: Option<u64>,
}

/// Why the probe as a whole could not run. Individual missing files are not errors.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe root {path} is not a readable directory: {source}")]
    Root { path: PathBuf, source: std::io::Error },
    #[error("probe root {path} has no sys/devices/system/cpu: not a Linux sysfs tree")]
    NotSysfs { path: PathBuf },
    #[error("resolve relative data dir {path}: current directory unknown: {source}")]
    CurrentDir { path: PathBuf, source: std::io::Error },
}

/// Probes the machine below `root` (use `/` in production) for the given data dirs, with this
/// process's resource limits.
pub fn probe(root: &Path, data_dirs: &[PathBuf]) -> Result<Machine, ProbeError> {
    probe_with_limits(root, data_dirs, ProcessLimits::current())
}

/// Like [`probe`] with injected process limits (tests, or a probe on behalf of another process).
pub fn probe_with_limits(
    root: &Path,
    data_dirs: &[PathBuf],
    process_limits: ProcessLimits,
) -> Result<Machine, ProbeError> {
    std::fs::read_dir(root).map_err(|source| ProbeError::Root { path: root.to_path_buf(), source })?;
    if !sysfs::at(root, "sys/devices/system/cpu").is_dir() {
        return Err(ProbeError::NotSysfs { path: root.to_path_buf() });
    }
    let interrupts = read_trimmed(root, "proc/interrupts").map(|text| parse_interrupts(&text)).unwrap_or_default();
    let numa_nodes = probe_numa_nodes(root);
    let cpus = probe_cpus(root, &numa_nodes);
    let meminfo = read_trimmed(root, "proc/meminfo").map(|text| parse_meminfo(&text)).unwrap_or_default();
    let (disks, unresolved_data_dirs) = probe_disks(root, data_dirs, &interrupts)?;
    Ok(Machine {
        cpus,
        memory_bytes: meminfo.get("MemTotal").copied(),
        numa_nodes,
        memory: probe_memory_settings(root, &meminfo),
        disks,
        unresolved_data_dirs,
        nics: probe_nics(root, &interrupts),
        clocksource: Clocksource {
            current: read_trimmed(root, "sys/devices/system/clocksource/clocksource0/current_clocksource"),
            available: read_trimmed(root, "sys/devices/system/clocksource/clocksource0/available_clocksource")
                .map(|text| parse_choices(&text))
                .unwrap_or_default(),
        },
        limits: Limits {
            open_files: process_limits.open_files,
            locked_memory_bytes: process_limits.locked_memory_bytes,
            nr_open: read_u64(root, "proc/sys/fs/nr_open"),
            aio_max_nr: read_u64(root, "proc/sys/fs/aio-max-nr"),
            aio_nr: read_u64(root, "proc/sys/fs/aio-nr"),
            io_uring_disabled: read_u64(root, "proc/sys/kernel/io_uring_disabled"),
        },
    })
}

fn read_cpu_list(root: &Path, relative: &str) -> Option<Vec<usize>> {
    read_trimmed(root, relative).and_then(|text| parse_cpu_list(&text))
}

/// Numbers of entries named `<prefix><number>` in a directory (`cpu12`, `node1`).
fn numbered_entries(root: &Path, relative: &str, prefix: &str) -> Vec<usize> {
    let mut numbers: Vec<usize> =
        list_dir(root, relative).iter().filter_map(|name| name.strip_prefix(prefix)?.parse().ok()).collect();
    numbers.sort_unstable();
    numbers
}

fn probe_numa_nodes(root: &Path) -> Vec<NumaNode> {
    numbered_entries(root, "sys/devices/system/node", "node")
        .into_iter()
        .map(|id| {
            let base = format!("sys/devices/system/node/node{id}");
            let meminfo =
                read_trimmed(root, &format!("{base}/meminfo")).map(|text| parse_meminfo(&text)).unwrap_or_default();
            NumaNode {
                id,
                cpus: read_cpu_list(root, &format!("{base}/cpulist")).unwrap_or_default(),
                memory_bytes: meminfo.get("MemTotal").copied(),
                memory_free_bytes: meminfo.get("MemFree").copied(),
            }
        })
        .collect()
}

fn probe_cpus(root: &Path, numa_nodes: &[NumaNode]) -> CpuTopology {
    const CPU: &str = "sys/devices/system/cpu";
    let mut ids: BTreeSet<usize> = numbered_entries(root, CPU, "cpu").into_iter().collect();
    let present = read_cpu_list(root, &format!("{CPU}/present"));
    ids.extend(present.iter().flatten());
    let online_file = read_cpu_list(root, &format!("{CPU}/online"));
    let isolated_list = read_cpu_list(root, &format!("{CPU}/isolated")).unwrap_or_default();

    let mut list = Vec::new();
    for id in ids {
        let base = format!("{CPU}/cpu{id}");
        let online = match &online_file {
            Some(online) => online.contains(&id),
            // cpu0 usually has no `online` attribute: it cannot be taken offline.
            None => read_u64(root, &format!("{base}/online")).is_none_or(|flag| flag == 1),
        };
        let node = numa_nodes.iter().find(|node| node.cpus.contains(&id)).map(|node| node.id);
        list.push(Cpu {
            id,
            online,
            isolated: isolated_list.contains(&id),
            socket: read_u64(root, &format!("{base}/topology/physical_package_id")).map(|v| v as usize),
            core: read_u64(root, &format!("{base}/topology/core_id")).map(|v| v as usize),
            numa_node: node,
            siblings: read_cpu_list(root, &format!("{base}/topology/thread_siblings_list")).unwrap_or_else(|| vec![id]),
            governor: read_trimmed(root, &format!("{base}/cpufreq/scaling_governor")),
            max_frequency_khz: read_u64(root, &format!("{base}/cpufreq/cpuinfo_max_freq")),
        });
    }

    let online: Vec<&Cpu> = list.iter().filter(|cpu| cpu.online).collect();
    let sockets: BTreeSet<usize> = online.iter().map(|cpu| cpu.socket.unwrap_or(0)).collect();
    let cores: BTreeSet<(usize, usize)> =
        online.iter().map(|cpu| (cpu.socket.unwrap_or(0), cpu.core.unwrap_or(cpu.id))).collect();
    let online_ids: BTreeSet<usize> = online.iter().map(|cpu| cpu.id).collect();
    let threads_per_core = online
        .iter()
        .map(|cpu| cpu.siblings.iter().filter(|sibling| online_ids.contains(sibling)).count())
        .max()
        .unwrap_or(0);
    let governors: BTreeSet<&str> = online.iter().filter_map(|cpu| cpu.governor.as_deref()).collect();
    let governor = match governors.len() {
        0 => None,
        1 => governors.first().map(|g| g.to_string()),
        _ => Some("mixed".to_string()),
    };
    CpuTopology {
        online: online.len(),
        online_list: online_ids.iter().copied().collect(),
        offline_list: list.iter().filter(|cpu| !cpu.online).map(|cpu| cpu.id).collect(),
        isolated_list,
        sockets: sockets.len(),
        cores: cores.len(),
        threads_per_core,
        smt_active: read_u64(root, &format!("{CPU}/smt/active")).map(|v| v == 1),
        smt_control: read_trimmed(root, &format!("{CPU}/smt/control")),
        governor,
        caches: probe_caches(root, &online_ids),
        list,
    }
}

/// (level, kind) → (size, distinct shared-CPU sets).
type CacheInstances = BTreeMap<(u32, String), (Option<u64>, BTreeSet<Vec<usize>>)>;

fn probe_caches(root: &Path, online: &BTreeSet<usize>) -> Vec<Cache> {
    let mut found = CacheInstances::new();
    for cpu in online {
        let base = format!("sys/devices/system/cpu/cpu{cpu}/cache");
        for index in list_dir(root, &base).iter().filter(|name| name.starts_with("index")) {
            let dir = format!("{base}/{index}");
            let Some(level) = read_u64(root, &format!("{dir}/level")) else {
                continue;
            };
            let kind = read_trimmed(root, &format!("{dir}/type")).unwrap_or_default();
            let size = read_trimmed(root, &format!("{dir}/size")).and_then(|s| parse_cache_size(&s));
            let shared = read_cpu_list(root, &format!("{dir}/shared_cpu_list")).unwrap_or_else(|| vec![*cpu]);
            let entry = found.entry((level as u32, kind)).or_insert((size, BTreeSet::new()));
            entry.1.insert(shared);
        }
    }
    found
        .into_iter()
        .map(|((level, kind), (size_bytes, sets))| Cache {
            level,
            kind,
            size_bytes,
            instances: sets.len(),
            cpus_per_instance: sets.iter().map(Vec::len).max().unwrap_or(0),
        })
        .collect()
}

fn probe_memory_settings(root: &Path, meminfo: &BTreeMap<String, u64>) -> MemorySettings {
    const THP: &str = "sys/kernel/mm/transparent_hugepage";
    let mut huge_pages_by_size_kb = BTreeMap::new();
    for name in list_dir(root, "sys/kernel/mm/hugepages") {
        let Some(size_kb) = name
            .strip_prefix("hugepages-")
            .and_then(|rest| rest.strip_suffix("kB"))
            .and_then(|size| size.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(count) = read_u64(root, &format!("sys/kernel/mm/hugepages/{name}/nr_hugepages")) {
            huge_pages_by_size_kb.insert(size_kb, count);
        }
    }
    MemorySettings {
        transparent_hugepages: read_trimmed(root, &format!("{THP}/enabled")).and_then(|text| parse_selected(&text)),
        transparent_hugepages_defrag: read_trimmed(root, &format!("{THP}/defrag"))
            .and_then(|text| parse_selected(&text)),
        swappiness: read_u64(root, "proc/sys/vm/swappiness"),
        huge_page_size_bytes: meminfo.get("Hugepagesize").copied(),
        huge_pages_total: meminfo.get("HugePages_Total").copied(),
        huge_pages_free: meminfo.get("HugePages_Free").copied(),
        huge_pages_by_size_kb,
    }
}

/// Makes a data dir absolute and free of `.`/`..` so it can be matched against mount points.
///
/// With the real root the path is canonicalized (symlinked data dirs resolve to the mount they
/// really live on) as far as it exists; with a fixture root the path is only normalized
/// lexically, since it names a directory of the captured machine, not of this one.
fn normalize_data_dir(root: &Path, data_dir: &Path) -> Result<PathBuf, ProbeError> {
    let absolute = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| ProbeError::CurrentDir { path: data_dir.to_path_buf(), source })?
            .join(data_dir)
    };
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    if root != Path::new("/") {
        return Ok(normal);
    }
    // Canonicalize the longest existing ancestor and re-append the missing tail.
    let mut existing = normal.clone();
    let mut tail = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => tail.push(name.to_os_string()),
            None => break,
        }
        existing.pop();
    }
    let mut resolved = existing.canonicalize().unwrap_or(existing);
    for name in tail.iter().rev() {
        resolved.push(name);
    }
    Ok(resolved)
}

/// The mount that contains `path`: the longest matching mount point, the last one mounted
/// when several share a mount point (it shadows the others).
pub fn mount_for<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let mut best: Option<&MountInfo> = None;
    for mount in mounts {
        if path.starts_with(&mount.mount_point)
            && best.is_none_or(|b| mount.mount_point.components().count() >= b.mount_point.components().count())
        {
            best = Some(mount);
        }
    }
    best
}

/// A block device found in `/sys/block`: the whole disk and, if mounted via one, the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockDevice {
    disk: String,
    partition: Option<String>,
    major_minor: String,
}

/// Finds the block device with the given `major:minor`, or failing that the given kernel name,
/// by walking `/sys/block/<disk>` and its partition subdirectories. This works both on the
/// real sysfs (where these are symlinks) and on plain fixture directories.
fn find_block_device(root: &Path, major_minor: &str, name: Option<&str>) -> Option<BlockDevice> {
    let mut by_name = None;
    for disk in list_dir(root, "sys/block") {
        let disk_dev = read_trimmed(root, &format!("sys/block/{disk}/dev")).unwrap_or_default();
        let whole = BlockDevice { disk: disk.clone(), partition: None, major_minor: disk_dev.clone() };
        if disk_dev == major_minor {
            return Some(whole);
        }
        if name == Some(disk.as_str()) {
            by_name = Some(whole);
        }
        for entry in list_dir(root, &format!("sys/block/{disk}")) {
            if !sysfs::at(root, &format!("sys/block/{disk}/{entry}/partition")).exists() {
                continue;
            }
            let part_dev = read_trimmed(root, &format!("sys/block/{disk}/{entry}/dev")).unwrap_or_default();
            let part =
                BlockDevice { disk: disk.clone(), partition: Some(entry.clone()), major_minor: part_dev.clone() };
            if part_dev == major_minor {
                return Some(part);
            }
            if name == Some(entry.as_str()) {
                by_name = Some(part);
            }
        }
    }
    by_name
}

fn probe_disks(
    root: &Path,
    data_dirs: &[PathBuf],
    interrupts: &[InterruptLine],
) -> Result<(Vec<Disk>, Vec<UnresolvedDataDir>), ProbeError> {
    let mounts = read_trimmed(root, "proc/self/mountinfo").map(|text| parse_mountinfo(&text)).unwrap_or_default();
    let mut disks: Vec<Disk> = Vec::new();
    let mut unresolved = Vec::new();
    for data_dir in data_dirs {
        let path = normalize_data_dir(root, data_dir)?;
        let Some(mount) = mount_for(&mounts, &path) else {
            unresolved.push(UnresolvedDataDir {
                data_dir: data_dir.clone(),
                reason: format!("no mount in proc/self/mountinfo contains {}", path.display()),
            });
            continue;
        };
        let source_name = mount.source.strip_prefix("/dev/");
        let Some(device) = find_block_device(root, &mount.major_minor, source_name) else {
            unresolved.push(UnresolvedDataDir {
                data_dir: data_dir.clone(),
                reason: format!(
                    "{} filesystem on {} (device {} from {}) has no entry in sys/block",
                    mount.filesystem,
                    mount.mount_point.display(),
                    mount.major_minor,
                    mount.source
                ),
            });
            continue;
        };
        let data_dir_mount = DataDirMount {
            data_dir: data_dir.clone(),
            mount_point: mount.mount_point.clone(),
            filesystem: mount.filesystem.clone(),
        };
        match disks.iter_mut().find(|disk| disk.device == device.disk && disk.partition == device.partition) {
            Some(disk) => disk.mounts.push(data_dir_mount),
            None => {
                let mut disk = probe_disk(root, &device, interrupts);
                disk.mounts.push(data_dir_mount);
                disks.push(disk);
            }
        }
    }
    Ok((disks, unresolved))
}

fn probe_disk(root: &Path, device: &BlockDevice, interrupts: &[InterruptLine]) -> Disk {
    let name = &device.disk;
    let base = format!("sys/block/{name}");
    let queue = format!("{base}/queue");
    let kind = DiskKind::from_name(name);
    let irq_names: Box<dyn Fn(&str) -> bool> = match kind {
        DiskKind::Nvme => {
            // nvme0n1 → controller nvme0, whose queues are nvme0q0 (admin), nvme0q1, …
            let controller = nvme_controller(name);
            Box::new(move |irq_name: &str| {
                irq_name
                    .strip_prefix(controller.as_str())
                    .and_then(|rest| rest.strip_prefix('q'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        }
        DiskKind::Virtio => match link_name(root, &format!("{base}/device")) {
            Some(virtio) => Box::new(move |irq_name: &str| {
                irq_name
                    .strip_prefix(virtio.as_str())
                    .is_some_and(|rest| rest.starts_with('-') && !rest.ends_with("-config"))
            }),
            None => Box::new(|_: &str| false),
        },
        _ => Box::new(|_: &str| false),
    };
    let irqs = interrupts.iter().filter(|line| irq_names(&line.name)).map(|line| probe_irq(root, line)).collect();
    Disk {
        device: name.clone(),
        partition: device.partition.clone(),
        major_minor: device.major_minor.clone(),
        kind,
        nvme: kind == DiskKind::Nvme,
        model: read_trimmed(root, &format!("{base}/device/model")).filter(|m| !m.is_empty()),
        size_bytes: read_u64(root, &format!("{base}/size")).map(|sectors| sectors * 512),
        logical_block_size: read_u64(root, &format!("{queue}/logical_block_size")),
        physical_block_size: read_u64(root, &format!("{queue}/physical_block_size")),
        rotational: read_u64(root, &format!("{queue}/rotational")).map(|v| v == 1),
        scheduler: read_trimmed(root, &format!("{queue}/scheduler")).and_then(|text| parse_selected(&text)),
        schedulers_available: read_trimmed(root, &format!("{queue}/scheduler"))
            .map(|text| parse_choices(&text))
            .unwrap_or_default(),
        nr_requests: read_u64(root, &format!("{queue}/nr_requests")),
        hardware_queues: sysfs::at(root, &format!("{base}/mq"))
            .is_dir()
            .then(|| list_dir(root, &format!("{base}/mq")).len()),
        nomerges: read_u64(root, &format!("{queue}/nomerges")),
        write_cache: read_trimmed(root, &format!("{queue}/write_cache")),
        fua: read_u64(root, &format!("{queue}/fua")).map(|v| v == 1),
        discard_supported: read_u64(root, &format!("{queue}/discard_max_bytes")).map(|v| v > 0),
        numa_node: read_numa_node(root, &format!("{base}/device")),
        backing_file: read_trimmed(root, &format!("{base}/loop/backing_file"))
            .filter(|f| !f.is_empty())
            .map(PathBuf::from),
        slaves: list_dir(root, &format!("{base}/slaves")),
        irqs,
        mounts: Vec::new(),
    }
}

/// `nvme0n1` → `nvme0`; `nvme12c3n1` (multipath hidden path) → `nvme12`.
fn nvme_controller(name: &str) -> String {
    let digits: String = name.trim_start_matches("nvme").chars().take_while(char::is_ascii_digit).collect();
    format!("nvme{digits}")
}

/// The NUMA node of a device: its own `numa_node`, else its parent's (NVMe namespaces and
/// virtio devices sit below the PCI function that carries it). `-1` means "no affinity".
fn read_numa_node(root: &Path, device: &str) -> Option<usize> {
    read_i64(root, &format!("{device}/numa_node"))
        .or_else(|| read_i64(root, &format!("{device}/device/numa_node")))
        .and_then(|node| usize::try_from(node).ok())
}

fn probe_irq(root: &Path, line: &InterruptLine) -> Irq {
    let irq = line.irq;
    Irq {
        irq,
        name: line.name.clone(),
        affinity: read_cpu_list(root, &format!("proc/irq/{irq}/smp_affinity_list")),
        effective_affinity: read_cpu_list(root, &format!("proc/irq/{irq}/effective_affinity_list")),
    }
}

/// Does interrupt `irq_name` belong to interface `nic` on device `device`?
///
/// Drivers name their queue interrupts after the interface (`eth0-TxRx-3`, `ens1f0-rx-0`),
/// the virtio device (`virtio2-input.0`) or the PCI address (`mlx5_comp3@pci:0000:3b:00.0`).
fn nic_irq_matches(irq_name: &str, nic: &str, device: Option<&str>) -> bool {
    if irq_name == nic || irq_name.strip_prefix(nic).is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
    {
        return true;
    }
    let Some(device) = device else { return false };
    if device.starts_with("virtio") {
        return irq_name.strip_prefix(device).is_some_and(|rest| rest.starts_with('-') && !rest.ends_with("-config"));
    }
    // A PCI address such as 0000:3b:00.0.
    device.contains(':') && irq_name.contains(device)
}

fn probe_nics(root: &Path, interrupts: &[InterruptLine]) -> Vec<Nic> {
    let mut nics = Vec::new();
    for name in list_dir(root, "sys/class/net") {
        let base = format!("sys/class/net/{name}");
        // Virtual interfaces (lo, bridges, veth, ifb) have no `device`: nothing to tune there.
        if std::fs::symlink_metadata(sysfs::at(root, &format!("{base}/device"))).is_err() {
            continue;
        }
        let device = link_name(root, &format!("{base}/device"));
        let queues = list_dir(root, &format!("{base}/queues"));
        let msi_irqs: BTreeSet<u32> =
            list_dir(root, &format!("{base}/device/msi_irqs")).iter().filter_map(|irq| irq.parse().ok()).collect();
        let irqs = interrupts
            .iter()
            .filter(|line| msi_irqs.contains(&line.irq) || nic_irq_matches(&line.name, &name, device.as_deref()))
            .map(|line| probe_irq(root, line))
            .collect();
        nics.push(Nic {
            device,
            driver: link_name(root, &format!("{base}/device/driver")),
            speed_mbps: read_i64(root, &format!("{base}/speed")).and_then(|speed| u64::try_from(speed).ok()),
            mtu: read_u64(root, &format!("{base}/mtu")),
            operstate: read_trimmed(root, &format!("{base}/operstate")),
            rx_queues: queues.iter().filter(|q| q.starts_with("rx-")).count(),
            tx_queues: queues.iter().filter(|q| q.starts_with("tx-")).count(),
            numa_node: read_numa_node(root, &format!("{base}/device")),
            irqs,
            name,
        });
    }
    nics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_kinds() {
        assert_eq!(DiskKind::from_name("nvme0n1"), DiskKind::Nvme);
        assert_eq!(DiskKind::from_name("vda"), DiskKind::Virtio);
        assert_eq!(DiskKind::from_name("loop7"), DiskKind::Loop);
        assert_eq!(DiskKind::from_name("dm-0"), DiskKind::DeviceMapper);
        assert_eq!(DiskKind::from_name("xvdb"), DiskKind::Xen);
        assert_eq!(DiskKind::from_name("sdb"), DiskKind::Scsi);
    }

    #[test]
    fn nvme_controller_names() {
        assert_eq!(nvme_controller("nvme0n1"), "nvme0");
        assert_eq!(nvme_controller("nvme12n3"), "nvme12");
    }

    #[test]
    fn nic_irq_names() {
        assert!(nic_irq_matches("eth0-TxRx-3", "eth0", None));
        assert!(!nic_irq_matches("eth01-TxRx-3", "eth0", None));
        assert!(nic_irq_matches("virtio2-input.0", "eth0", Some("virtio2")));
        assert!(!nic_irq_matches("virtio2-config", "eth0", Some("virtio2")));
        assert!(!nic_irq_matches("virtio21-input.0", "eth0", Some("virtio2")));
        assert!(nic_irq_matches("mlx5_comp3@pci:0000:3b:00.0", "ens1f0", Some("0000:3b:00.0")));
    }

    #[test]
    fn longest_mount_wins() {
        let mounts = parse_mountinfo(
            "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
             2 1 259:2 / /var/lib/corelog rw - xfs /dev/nvme0n1p2 rw\n\
             3 1 0:40 / /var rw - tmpfs tmpfs rw\n",
        );
        let found = mount_for(&mounts, Path::new("/var/lib/corelog/data"));
        assert_eq!(found.map(|m| m.source.as_str()), Some("/dev/nvme0n1p2"));
        let found = mount_for(&mounts, Path::new("/var/lib/corelogx"));
        assert_eq!(found.map(|m| m.source.as_str()), Some("tmpfs"));
    }

    #[test]
    fn process_limits_are_read() {
        let limits = ProcessLimits::current();
        // Every Linux process may open at least stdin/stdout/stderr.
        assert!(limits.open_files.soft.is_none_or(|soft| soft >= 3));
    }
}
