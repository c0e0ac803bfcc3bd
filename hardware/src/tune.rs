//! Tuning checks: each kernel or process setting that matters to the broker, its current value,
//! the recommended one, why, and whether it is fine; and `apply`, which fixes what it can.
//!
//! [`check`] is a pure function of the probed [`Machine`] (plus a few extra reads below the same
//! injectable root). [`apply`] writes sysfs/procfs files below `root` and raises this process's
//! rlimits; it reports, item by item, what it changed and what it could not (not root, read-only
//! sysfs in a container or VM, kernel-managed IRQs). Tests run it on a temporary copy of a
//! fixture tree only.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::{format_bytes, plan_shards};
use crate::probe::{Irq, Machine, Rlimit};
use crate::sysfs::{format_cpu_list, parse_choices, read_trimmed};

/// Swappiness at or below this is fine (the recommendation is 1).
pub const SWAPPINESS_MAX: u64 = 10;
/// Recommended `fs.aio-max-nr`.
pub const AIO_MAX_NR_MIN: u64 = 1_048_576;
/// Soft open-files limit below which the broker may run out of descriptors.
pub const OPEN_FILES_MIN: u64 = 262_144;
/// Open-files limit recommended for the broker.
pub const OPEN_FILES_RECOMMENDED: u64 = 1_048_576;
/// Locked-memory floor in bytes (the actual minimum also scales with the CPU count).
pub const LOCKED_MEMORY_MIN_BYTES: u64 = 512 * 1024 * 1024;
/// Locked memory worth granting per CPU (io_uring rings and registered DMA buffers).
pub const LOCKED_MEMORY_PER_CPU_BYTES: u64 = 64 * 1024 * 1024;

/// Outcome of a check.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TuneStatus {
    Ok,
    NotOk,
    /// The value could not be read.
    Unknown,
    /// The setting does not exist here (no cpufreq in a VM, no IRQs for a device).
    NotApplicable,
}

/// A process resource limit `apply` can raise.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitResource {
    OpenFiles,
    LockedMemory,
}

/// How `apply` would fix an item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fix {
    /// Write values to files; paths are kernel paths, taken relative to the root.
    WriteFiles { writes: Vec<FileWrite> },
    /// Raise this process's limit to `target` (or at least soft up to hard).
    RaiseLimit {
        resource: LimitResource,
        /// `None` = unlimited.
        target: Option<u64>,
    },
    /// Nothing `apply` can do; the operator has to.
    Manual { instruction: String },
}

/// One file write of a fix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileWrite {
    pub path: String,
    pub value: String,
}

/// One checked setting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TuneItem {
    /// Stable identifier: `cpu_governor`, `transparent_hugepages`, `swappiness`,
    /// `clocksource`, `aio_max_nr`, `io_uring`, `open_files`, `locked_memory`,
    /// `disk_scheduler`, `disk_nomerges`, `disk_write_cache`, `disk_irq_affinity`,
    /// `nic_irq_affinity`.
    pub check: String,
    /// What it applies to: `system`, `process`, `cpus`, a disk or NIC name.
    pub subject: String,
    pub current: Option<String>,
    pub recommended: String,
    pub status: TuneStatus,
    pub why: String,
    /// Present when the item is not ok and something can be done.
    pub fix: Option<Fix>,
}

/// What `apply` did with one item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApplyOutcome {
    pub check: String,
    pub subject: String,
    pub result: ApplyResult,
    pub detail: String,
}

/// Result of applying one fix.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResult {
    Applied,
    Failed,
    /// Needs the operator (a manual fix, or only partly possible).
    Manual,
}

struct Item<'a> {
    check: &'a str,
    subject: String,
    current: Option<String>,
    recommended: String,
    ok: Option<bool>,
    why: &'a str,
    fix: Option<Fix>,
}

impl Item<'_> {
    fn build(self) -> TuneItem {
        let status = match self.ok {
            Some(true) => TuneStatus::Ok,
            Some(false) => TuneStatus::NotOk,
            None => TuneStatus::Unknown,
        };
        TuneItem {
            check: self.check.to_string(),
            subject: self.subject,
            current: self.current,
            recommended: self.recommended,
            status,
            why: self.why.to_string(),
            fix: if status == TuneStatus::NotOk { self.fix } else { None },
        }
    }
}

fn write_fix(writes: Vec<(String, String)>) -> Option<Fix> {
    Some(Fix::WriteFiles { writes: writes.into_iter().map(|(path, value)| FileWrite { path, value }).collect() })
}

fn not_applicable(check: &str, subject: &str, why: &str, reason: &str) -> TuneItem {
    TuneItem {
        check: check.to_string(),
        subject: subject.to_string(),
        current: Some(reason.to_string()),
        recommended: "-".to_string(),
        status: TuneStatus::NotApplicable,
        why: why.to_string(),
        fix: None,
    }
}

/// Lists every setting that matters, with its state. See `docs/hardware.md` for the reasons.
pub fn check(root: &Path, machine: &Machine) -> Vec<TuneItem> {
    let mut items = vec![
        check_governor(root, machine),
        check_thp(machine),
        check_swappiness(machine),
        check_clocksource(machine),
        check_aio(machine),
        check_io_uring(machine),
        check_open_files(machine),
        check_locked_memory(machine),
    ];
    for disk in &machine.disks {
        items.extend(check_disk(machine, disk));
    }
    let reserved = plan_shards(machine, None).reserved_cpus;
    for nic in &machine.nics {
        items.push(check_nic_irqs(machine, nic, &reserved));
    }
    items
}

const WHY_GOVERNOR: &str = "thread-per-core reactors poll and sleep in short bursts; a power-saving governor lowers the clock between bursts and adds wake-up latency to every request";

fn check_governor(root: &Path, machine: &Machine) -> TuneItem {
    let with_cpufreq: Vec<_> = machine.cpus.list.iter().filter(|cpu| cpu.online && cpu.governor.is_some()).collect();
    if with_cpufreq.is_empty() {
        return not_applicable("cpu_governor", "cpus", WHY_GOVERNOR, "no cpufreq (VM or fixed frequency)");
    }
    let slow: Vec<_> = with_cpufreq.iter().filter(|cpu| cpu.governor.as_deref() != Some("performance")).collect();
    let available = read_trimmed(
        root,
        &format!("sys/devices/system/cpu/cpu{}/cpufreq/scaling_available_governors", with_cpufreq[0].id),
    )
    .map(|text| parse_choices(&text));
    let fix = if available.is_some_and(|list| !list.iter().any(|g| g == "performance")) {
        Some(Fix::Manual {
            instruction:
                "the cpufreq driver offers no `performance` governor; set the BIOS power profile to maximum performance"
                    .into(),
        })
    } else {
        write_fix(
            slow.iter()
                .map(|cpu| {
                    (
                        format!("/sys/devices/system/cpu/cpu{}/cpufreq/scaling_governor", cpu.id),
                        "performance".to_string(),
                    )
                })
                .collect(),
        )
    };
    Item {
        check: "cpu_governor",
        subject: "cpus".into(),
        current: machine.cpus.governor.clone(),
        recommended: "performance".into(),
        ok: Some(slow.is_empty()),
        why: WHY_GOVERNOR,
        fix,
    }
    .build()
}

fn check_thp(machine: &Machine) -> TuneItem {
    let current = machine.memory.transparent_hugepages.clone();
    Item {
        check: "transparent_hugepages",
        subject: "system".into(),
        ok: current.as_deref().map(|v| v == "madvise" || v == "never"),
        current,
        recommended: "madvise".into(),
        why: "with `always`, khugepaged compaction and huge-page faults stall threads for milliseconds at random; `madvise` keeps huge pages for memory that asks for them",
        fix: write_fix(vec![(
            "/sys/kernel/mm/transparent_hugepage/enabled".into(),
            "madvise".into(),
        )]),
    }
    .build()
}

fn check_swappiness(machine: &Machine) -> TuneItem {
    let current = machine.memory.swappiness;
    Item {
        check: "swappiness",
        subject: "system".into(),
        current: current.map(|v| v.to_string()),
        recommended: "1".into(),
        ok: current.map(|v| v <= SWAPPINESS_MAX),
        why: "a shard's cache and buffers must never be swapped out: a page fault on the reactor thread stalls every partition of the shard",
        fix: write_fix(vec![("/proc/sys/vm/swappiness".into(), "1".into())]),
    }
    .build()
}

const WHY_CLOCKSOURCE: &str = "the broker reads the clock on every request and batch; tsc is read in user space (vDSO), other sources (hpet, acpi_pm, sometimes kvm-clock) cost a system call or a slow read";

fn check_clocksource(machine: &Machine) -> TuneItem {
    let clock = &machine.clocksource;
    if clock.current.is_some() && !clock.available.iter().any(|c| c == "tsc") {
        return not_applicable("clocksource", "system", WHY_CLOCKSOURCE, "tsc not available here");
    }
    Item {
        check: "clocksource",
        subject: "system".into(),
        current: clock.current.clone(),
        recommended: "tsc".into(),
        ok: clock.current.as_deref().map(|c| c == "tsc"),
        why: WHY_CLOCKSOURCE,
        fix: write_fix(vec![("/sys/devices/system/clocksource/clocksource0/current_clocksource".into(), "tsc".into())]),
    }
    .build()
}

fn check_aio(machine: &Machine) -> TuneItem {
    let current = machine.limits.aio_max_nr;
    Item {
        check: "aio_max_nr",
        subject: "system".into(),
        current: current.map(|v| v.to_string()),
        recommended: AIO_MAX_NR_MIN.to_string(),
        ok: current.map(|v| v >= AIO_MAX_NR_MIN),
        why: "io_uring does not count against it, but libaio users on the same host (fio --ioengine=libaio, a co-located Seastar/Redpanda or ScyllaDB) fail to start when the system-wide AIO context pool is exhausted",
        fix: write_fix(vec![(
            "/proc/sys/fs/aio-max-nr".into(),
            AIO_MAX_NR_MIN.to_string(),
        )]),
    }
    .build()
}

fn check_io_uring(machine: &Machine) -> TuneItem {
    let why = "the storage engine and iotune submit all disk I/O through io_uring; `kernel.io_uring_disabled` = 1 or 2 makes io_uring_setup fail";
    match machine.limits.io_uring_disabled {
        None => not_applicable("io_uring", "system", why, "no io_uring_disabled sysctl (kernel < 6.6: enabled)"),
        Some(value) => Item {
            check: "io_uring",
            subject: "system".into(),
            current: Some(value.to_string()),
            recommended: "0".into(),
            ok: Some(value == 0),
            why,
            fix: write_fix(vec![("/proc/sys/kernel/io_uring_disabled".into(), "0".into())]),
        }
        .build(),
    }
}

fn format_rlimit(limit: Rlimit, bytes: bool) -> String {
    let show = |value: Option<u64>| match value {
        None => "unlimited".to_string(),
        Some(v) if bytes => format_bytes(v),
        Some(v) => v.to_string(),
    };
    format!("soft {} / hard {}", show(limit.soft), show(limit.hard))
}

fn check_open_files(machine: &Machine) -> TuneItem {
    let limit = machine.limits.open_files;
    let target = machine.limits.nr_open.map_or(OPEN_FILES_RECOMMENDED, |max| max.min(OPEN_FILES_RECOMMENDED));
    Item {
        check: "open_files",
        subject: "process".into(),
        current: Some(format_rlimit(limit, false)),
        recommended: format!("≥ {OPEN_FILES_MIN} (LimitNOFILE={OPEN_FILES_RECOMMENDED})"),
        ok: Some(limit.soft.is_none_or(|soft| soft >= OPEN_FILES_MIN)),
        why: "every partition keeps a segment, an offset index and a time index open per segment, and every client connection is a socket; running out of descriptors fails produces and accepts",
        fix: Some(Fix::RaiseLimit {
            resource: LimitResource::OpenFiles,
            target: Some(target),
        }),
    }
    .build()
}

fn check_locked_memory(machine: &Machine) -> TuneItem {
    let limit = machine.limits.locked_memory_bytes;
    let minimum = LOCKED_MEMORY_MIN_BYTES.max(LOCKED_MEMORY_PER_CPU_BYTES * machine.cpus.online as u64);
    Item {
        check: "locked_memory",
        subject: "process".into(),
        current: Some(format_rlimit(limit, true)),
        recommended: format!("unlimited (≥ {}, LimitMEMLOCK=infinity)", format_bytes(minimum)),
        ok: Some(limit.soft.is_none_or(|soft| soft >= minimum)),
        why: "each shard's io_uring rings and registered DMA buffers are locked memory (charged to RLIMIT_MEMLOCK on kernels before 5.12 and for registered buffers); too low a limit makes shard start-up fail",
        fix: Some(Fix::RaiseLimit {
            resource: LimitResource::LockedMemory,
            target: None,
        }),
    }
    .build()
}

/// Recommended IRQ placement when nothing is reserved: IRQ i on online CPU i mod n.
fn spread_affinity(irqs: &[Irq], machine: &Machine) -> Vec<(String, String)> {
    let online = &machine.cpus.online_list;
    if online.is_empty() {
        return Vec::new();
    }
    irqs.iter()
        .enumerate()
        .map(|(index, irq)| {
            (format!("/proc/irq/{}/smp_affinity_list", irq.irq), online[index % online.len()].to_string())
        })
        .collect()
}

/// Several queue IRQs all pinned to the same single CPU: one core takes every interrupt.
fn piled_on_one_cpu(irqs: &[Irq]) -> Option<bool> {
    let affinities: Vec<&Vec<usize>> = irqs.iter().filter_map(|irq| irq.affinity.as_ref()).collect();
    if affinities.is_empty() {
        return None;
    }
    let distinct: BTreeSet<&Vec<usize>> = affinities.iter().copied().collect();
    Some(affinities.len() >= 2 && distinct.len() == 1 && affinities[0].len() == 1)
}

fn describe_irqs(irqs: &[Irq]) -> String {
    let mut cpus = BTreeSet::new();
    for irq in irqs {
        cpus.extend(irq.affinity.iter().flatten());
    }
    let cpus: Vec<usize> = cpus.into_iter().collect();
    format!("{} IRQs on CPUs {}", irqs.len(), format_cpu_list(&cpus))
}

fn check_disk(machine: &Machine, disk: &crate::probe::Disk) -> Vec<TuneItem> {
    let mut items = Vec::new();
    let queue = format!("/sys/block/{}/queue", disk.device);
    // Real spinning disks benefit from an elevator; flash, NVMe and virtual disks (the host
    // schedules) do not. Virtio disks often claim to be rotational.
    let spinning = disk.rotational == Some(true)
        && !matches!(disk.kind, crate::probe::DiskKind::Nvme | crate::probe::DiskKind::Virtio);
    let scheduler_why = "the broker already issues large, ordered, aligned O_DIRECT writes and bounds its own queue depth; an I/O scheduler adds CPU cost and latency in the submission path of every I/O (spinning disks are the exception: mq-deadline)";
    match &disk.scheduler {
        None => items.push(not_applicable("disk_scheduler", &disk.device, scheduler_why, "no scheduler attribute")),
        Some(current) => {
            let recommended = if spinning { "mq-deadline" } else { "none" };
            let available = disk.schedulers_available.iter().any(|s| s == recommended);
            items.push(
                Item {
                    check: "disk_scheduler",
                    subject: disk.device.clone(),
                    current: Some(current.clone()),
                    recommended: recommended.into(),
                    ok: Some(current == recommended || !available),
                    why: scheduler_why,
                    fix: write_fix(vec![(format!("{queue}/scheduler"), recommended.into())]),
                }
                .build(),
            );
        }
    }
    if !spinning {
        items.push(
            Item {
                check: "disk_nomerges",
                subject: disk.device.clone(),
                current: disk.nomerges.map(|v| v.to_string()),
                recommended: "2".into(),
                ok: disk.nomerges.map(|v| v == 2),
                why: "writes arrive already batched by group commit; merge attempts only cost CPU on each submission (2 = never try)",
                fix: write_fix(vec![(format!("{queue}/nomerges"), "2".into())]),
            }
            .build(),
        );
    }
    items.push(TuneItem {
        check: "disk_write_cache".into(),
        subject: disk.device.clone(),
        current: disk.write_cache.clone(),
        recommended: "write back, or write through only with power-loss protection".into(),
        status: if disk.write_cache.is_some() {
            TuneStatus::Ok
        } else {
            TuneStatus::Unknown
        },
        why: "`write back` means a volatile cache: every fdatasync sends a cache flush, which is what makes acknowledged data durable. Drives with power-loss protection can be set to `write through` to skip that flush; doing so on any other drive loses acknowledged data on power failure, so tune never changes it".into(),
        fix: None,
    });
    if !disk.irqs.is_empty() {
        let piled = piled_on_one_cpu(&disk.irqs);
        items.push(
            Item {
                check: "disk_irq_affinity",
                subject: disk.device.clone(),
                current: Some(describe_irqs(&disk.irqs)),
                recommended: "queue IRQs spread over the CPUs (per-CPU queues for NVMe)".into(),
                ok: piled.map(|p| !p),
                why: "a completion interrupt should fire on (or near) the CPU that submitted the I/O; all queues on one CPU turn that CPU into a bottleneck and add cross-core wake-ups",
                fix: write_fix(spread_affinity(&disk.irqs, machine)),
            }
            .build(),
        );
    }
    items
}

fn check_nic_irqs(machine: &Machine, nic: &crate::probe::Nic, reserved: &[usize]) -> TuneItem {
    let why = "packet processing in softirq steals the reactor's CPU; on large machines it belongs on the cores the shard plan reserves, on small ones it must at least be spread rather than piled on one CPU";
    if nic.irqs.is_empty() {
        return not_applicable("nic_irq_affinity", &nic.name, why, "no IRQs found");
    }
    if reserved.is_empty() {
        let piled = piled_on_one_cpu(&nic.irqs);
        return Item {
            check: "nic_irq_affinity",
            subject: nic.name.clone(),
            current: Some(describe_irqs(&nic.irqs)),
            recommended: "spread over the CPUs".into(),
            ok: piled.map(|p| !p),
            why,
            fix: write_fix(spread_affinity(&nic.irqs, machine)),
        }
        .build();
    }
    let reserved_set: BTreeSet<usize> = reserved.iter().copied().collect();
    let on_reserved = nic.irqs.iter().all(|irq| {
        irq.affinity.as_ref().is_some_and(|cpus| !cpus.is_empty() && cpus.iter().all(|c| reserved_set.contains(c)))
    });
    let list = format_cpu_list(reserved);
    Item {
        check: "nic_irq_affinity",
        subject: nic.name.clone(),
        current: Some(describe_irqs(&nic.irqs)),
        recommended: format!("reserved CPUs {list}"),
        ok: Some(on_reserved),
        why,
        fix: write_fix(
            nic.irqs.iter().map(|irq| (format!("/proc/irq/{}/smp_affinity_list", irq.irq), list.clone())).collect(),
        ),
    }
    .build()
}

/// Applies the fixes of every not-ok item in `items` (from [`check`]) below `root`.
///
/// File writes go to `root` + the kernel path. Limit fixes change *this process's* rlimits (the
/// hard limit only when privileged); they cannot reach a broker started later, so the outcome
/// also says how to persist them. Items without a fix, or already ok, are skipped silently.
pub fn apply(root: &Path, items: &[TuneItem]) -> Vec<ApplyOutcome> {
    let mut outcomes = Vec::new();
    for item in items {
        if item.status != TuneStatus::NotOk {
            continue;
        }
        let Some(fix) = &item.fix else { continue };
        let (result, detail) = match fix {
            Fix::WriteFiles { writes } => apply_writes(root, writes),
            Fix::RaiseLimit { resource, target } => raise_limit(*resource, *target),
            Fix::Manual { instruction } => (ApplyResult::Manual, instruction.clone()),
        };
        outcomes.push(ApplyOutcome { check: item.check.clone(), subject: item.subject.clone(), result, detail });
    }
    outcomes
}

fn apply_writes(root: &Path, writes: &[FileWrite]) -> (ApplyResult, String) {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for write in writes {
        let path = crate::sysfs::at(root, &write.path);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut file| file.write_all(write.value.as_bytes()));
        match result {
            Ok(()) => done.push(format!("{} = {}", write.path, write.value)),
            Err(error) => failed.push(format!("write {:?} to {}: {}", write.value, path.display(), explain(&error))),
        }
    }
    match (done.is_empty(), failed.is_empty()) {
        (_, true) => (ApplyResult::Applied, done.join("; ")),
        (true, false) => (ApplyResult::Failed, failed.join("; ")),
        (false, false) => (ApplyResult::Failed, format!("partly applied ({}); {}", done.join("; "), failed.join("; "))),
    }
}

/// Names the usual reason behind a failed sysfs/procfs write.
fn explain(error: &std::io::Error) -> String {
    let hint = match error.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => " (not root?)",
        Some(libc::EROFS) => " (read-only sysfs/procfs: container or VM)",
        Some(libc::EIO) | Some(libc::EINVAL) => {
            " (the kernel refused the value: kernel-managed IRQ or unsupported setting)"
        }
        Some(libc::ENOENT) => " (the attribute does not exist on this kernel)",
        _ => "",
    };
    format!("{error}{hint}")
}

fn raise_limit(resource: LimitResource, target: Option<u64>) -> (ApplyResult, String) {
    let (raw, name, unit) = match resource {
        LimitResource::OpenFiles => (libc::RLIMIT_NOFILE, "LimitNOFILE", "nofile"),
        LimitResource::LockedMemory => (libc::RLIMIT_MEMLOCK, "LimitMEMLOCK", "memlock"),
    };
    let persist = format!(
        "this process only; persist with {name}= in the broker's systemd unit or `{unit}` in /etc/security/limits.conf"
    );
    let wanted = target.unwrap_or(libc::RLIM_INFINITY);
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    if unsafe { libc::getrlimit(raw, &mut current) } != 0 {
        return (ApplyResult::Failed, format!("getrlimit {unit}: {}", std::io::Error::last_os_error()));
    }
    let both = libc::rlimit { rlim_cur: wanted, rlim_max: wanted.max(current.rlim_max) };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(raw, &both) } == 0 {
        return (ApplyResult::Applied, format!("raised {unit} ({persist})"));
    }
    let error = std::io::Error::last_os_error();
    let soft_to_hard = libc::rlimit { rlim_cur: current.rlim_max, rlim_max: current.rlim_max };
    // SAFETY: as above; raising soft up to hard never needs privileges.
    if unsafe { libc::setrlimit(raw, &soft_to_hard) } == 0 {
        return (
            ApplyResult::Manual,
            format!(
                "raising the hard {unit} limit failed ({}); soft raised to the hard limit ({persist})",
                explain(&error)
            ),
        );
    }
    (ApplyResult::Failed, format!("setrlimit {unit}: {}", explain(&error)))
}
