//! Shard plans and tuning checks on the fixture machines; `apply` on a temporary copy only.

// Helpers outside #[test] functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use corelog_hardware::plan::plan_shards;
use corelog_hardware::probe::{Machine, ProcessLimits, Rlimit, probe_with_limits};
use corelog_hardware::tune::{self, ApplyResult, Fix, TuneItem, TuneStatus};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn limits() -> ProcessLimits {
    ProcessLimits {
        open_files: Rlimit { soft: Some(1024), hard: Some(524288) },
        locked_memory_bytes: Rlimit { soft: None, hard: None },
    }
}

fn probe_at(root: &Path, data_dirs: &[&str]) -> Machine {
    let dirs: Vec<PathBuf> = data_dirs.iter().map(PathBuf::from).collect();
    probe_with_limits(root, &dirs, limits()).unwrap()
}

const SERVER_DIRS: [&str; 2] = ["/var/lib/corelog/data", "/mnt/nvme1/corelog"];

#[test]
fn big_server_reserves_one_core_per_socket_and_skips_isolated() {
    let machine = probe_at(&fixture("server-2s-nvme"), &SERVER_DIRS);
    let plan = plan_shards(&machine, None);
    let expected: Vec<usize> = (1..=7).chain(9..=14).chain(17..=23).chain(25..=30).collect();
    assert_eq!(plan.shard_cpus, expected);
    assert_eq!(plan.reserved_cpus, vec![0, 8, 16, 24]);
    assert!(plan.notes.iter().any(|n| n.contains("15,31")), "{:?}", plan.notes);

    // Memory: 10 % to the OS; node 0 is the tighter node (14 shards on ~125.7 GiB).
    let total = 263_921_664 * 1024u64;
    assert_eq!(plan.memory_reserved_bytes, total / 10);
    let node0_usable = 131_812_356 * 1024u64 * 9 / 10;
    assert!(plan.memory_per_shard_bytes * 14 <= node0_usable);
    assert!(plan.memory_per_shard_bytes * 14 > node0_usable - 14 * 2 * MIB);
    assert!(plan.memory_per_shard_bytes < (total - total / 10) / 26);

    // NUMA-local data dirs: nvme0 is on node 0, nvme1 on node 1.
    for shard in &plan.shards {
        let expected_dir = if shard.numa_node == Some(0) { SERVER_DIRS[0] } else { SERVER_DIRS[1] };
        assert_eq!(shard.data_dir.as_deref(), Some(Path::new(expected_dir)));
    }
    let text = plan.to_string();
    assert!(text.starts_with("shard plan: 26 shards on CPUs 1-7,9-14,17-23,25-30 (CPUs 0,8,16,24 reserved"), "{text}");
    assert!(text.contains("node 1: 12 shards"), "{text}");
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["reserved_cpus"][3], 24);
}

#[test]
fn requested_cores_take_one_thread_per_core_first_and_clamp() {
    let machine = probe_at(&fixture("server-2s-nvme"), &SERVER_DIRS);
    let four = plan_shards(&machine, Some(4));
    assert_eq!(four.shard_cpus, vec![0, 1, 2, 3]);
    assert!(four.reserved_cpus.is_empty());
    assert!(four.memory_per_shard_bytes > 20 * GIB);

    let twenty = plan_shards(&machine, Some(20));
    let expected: Vec<usize> = (0..=14).chain(16..=20).collect();
    assert_eq!(twenty.shard_cpus, expected);

    let too_many = plan_shards(&machine, Some(100));
    assert_eq!(too_many.shard_cpus.len(), 30);
    assert!(
        too_many.notes.iter().any(|n| n.contains("100 cores requested") && n.contains("using 30")),
        "{:?}",
        too_many.notes
    );
}

#[test]
fn small_vm_uses_every_cpu() {
    let machine = probe_at(&fixture("vm-2vcpu-virtio"), &["/work/corelog-data"]);
    let plan = plan_shards(&machine, None);
    assert_eq!(plan.shard_cpus, vec![0, 1]);
    assert!(plan.reserved_cpus.is_empty());
    let total = 24_684_092 * 1024u64;
    assert_eq!(plan.memory_reserved_bytes, total / 10);
    assert_eq!(plan.memory_per_shard_bytes, (total - total / 10) / 2 / MIB * MIB);
    assert_eq!(plan.shards[1].data_dir.as_deref(), Some(Path::new("/work/corelog-data")));
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
}

#[test]
fn eight_cores_smt_off_is_still_small() {
    let machine = probe_at(&fixture("smt-off-8core"), &["/srv/corelog", "/mnt/loop/corelog"]);
    let plan = plan_shards(&machine, None);
    assert_eq!(plan.shard_cpus, (0..8).collect::<Vec<_>>());
    assert!(plan.reserved_cpus.is_empty());
    // No NUMA affinity on the disks: round-robin over both data dirs.
    assert_eq!(plan.shards[0].data_dir.as_deref(), Some(Path::new("/srv/corelog")));
    assert_eq!(plan.shards[1].data_dir.as_deref(), Some(Path::new("/mnt/loop/corelog")));
}

fn find<'a>(items: &'a [TuneItem], check: &str, subject: &str) -> &'a TuneItem {
    items
        .iter()
        .find(|item| item.check == check && item.subject == subject)
        .unwrap_or_else(|| panic!("no {check} for {subject} in {items:#?}"))
}

#[test]
fn server_checks() {
    let root = fixture("server-2s-nvme");
    let machine = probe_at(&root, &SERVER_DIRS);
    let items = tune::check(&root, &machine);
    let governor = find(&items, "cpu_governor", "cpus");
    assert_eq!(governor.status, TuneStatus::NotOk);
    assert_eq!(governor.current.as_deref(), Some("powersave"));
    match &governor.fix {
        Some(Fix::WriteFiles { writes }) => {
            assert_eq!(writes.len(), 32);
            assert_eq!(writes[5].path, "/sys/devices/system/cpu/cpu5/cpufreq/scaling_governor");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(find(&items, "transparent_hugepages", "system").status, TuneStatus::NotOk);
    assert_eq!(find(&items, "swappiness", "system").status, TuneStatus::NotOk);
    assert_eq!(find(&items, "clocksource", "system").status, TuneStatus::Ok);
    assert_eq!(find(&items, "aio_max_nr", "system").status, TuneStatus::NotOk);
    assert_eq!(find(&items, "io_uring", "system").status, TuneStatus::Ok);
    assert_eq!(find(&items, "open_files", "process").status, TuneStatus::NotOk);
    assert_eq!(find(&items, "locked_memory", "process").status, TuneStatus::Ok);
    assert_eq!(find(&items, "disk_scheduler", "nvme0n1").status, TuneStatus::Ok);
    assert_eq!(find(&items, "disk_nomerges", "nvme0n1").status, TuneStatus::NotOk);
    assert_eq!(find(&items, "disk_irq_affinity", "nvme0n1").status, TuneStatus::Ok);
    let nic = find(&items, "nic_irq_affinity", "ens1f0");
    assert_eq!(nic.status, TuneStatus::NotOk);
    assert_eq!(nic.recommended, "reserved CPUs 0,8,16,24");
    // Ok items carry no fix.
    assert!(items.iter().filter(|i| i.status != TuneStatus::NotOk).all(|i| i.fix.is_none()));
}

#[test]
fn vm_and_workstation_checks() {
    let root = fixture("vm-2vcpu-virtio");
    let items = tune::check(&root, &probe_at(&root, &["/work/corelog-data"]));
    assert_eq!(find(&items, "cpu_governor", "cpus").status, TuneStatus::NotApplicable);
    assert_eq!(find(&items, "transparent_hugepages", "system").status, TuneStatus::Ok);
    let scheduler = find(&items, "disk_scheduler", "vda");
    assert_eq!(scheduler.status, TuneStatus::NotOk);
    assert_eq!(scheduler.recommended, "none");
    assert_eq!(find(&items, "nic_irq_affinity", "eth0").status, TuneStatus::Ok);

    let root = fixture("smt-off-8core");
    let items = tune::check(&root, &probe_at(&root, &["/srv/corelog"]));
    assert_eq!(find(&items, "cpu_governor", "cpus").status, TuneStatus::Ok);
    assert_eq!(find(&items, "transparent_hugepages", "system").status, TuneStatus::Ok);
    assert_eq!(find(&items, "swappiness", "system").status, TuneStatus::Ok);
    assert_eq!(find(&items, "aio_max_nr", "system").status, TuneStatus::Ok);
    assert_eq!(find(&items, "io_uring", "system").status, TuneStatus::NotApplicable);
    assert_eq!(find(&items, "disk_scheduler", "sda").status, TuneStatus::NotOk);
    assert_eq!(find(&items, "nic_irq_affinity", "eno1").status, TuneStatus::Ok);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn apply_fixes_a_copy_of_the_server_tree() {
    let copy = tempfile::tempdir().unwrap();
    let root = copy.path();
    copy_tree(&fixture("server-2s-nvme"), root);
    let machine = probe_at(root, &SERVER_DIRS);
    // Process limits are left out: apply would change this test process's rlimits.
    let items: Vec<TuneItem> = tune::check(root, &machine)
        .into_iter()
        .filter(|item| !matches!(item.fix, Some(Fix::RaiseLimit { .. })))
        .collect();
    let not_ok_before = items.iter().filter(|i| i.status == TuneStatus::NotOk).count();
    assert!(not_ok_before >= 6);

    let outcomes = tune::apply(root, &items);
    assert_eq!(outcomes.len(), not_ok_before);
    assert!(outcomes.iter().all(|o| o.result == ApplyResult::Applied), "{outcomes:#?}");
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    assert_eq!(read("sys/kernel/mm/transparent_hugepage/enabled"), "madvise");
    assert_eq!(read("proc/irq/203/smp_affinity_list"), "0,8,16,24");
    assert_eq!(read("sys/block/nvme1n1/queue/nomerges"), "2");
    assert_eq!(read("sys/devices/system/cpu/cpu31/cpufreq/scaling_governor"), "performance");

    let after = tune::check(root, &probe_at(root, &SERVER_DIRS));
    let still: Vec<&TuneItem> = after
        .iter()
        .filter(|i| i.status == TuneStatus::NotOk && !matches!(i.fix, Some(Fix::RaiseLimit { .. })))
        .collect();
    assert!(still.is_empty(), "{still:#?}");
    // The fixture in the repository is untouched.
    assert_eq!(std::fs::read_to_string(fixture("server-2s-nvme").join("proc/sys/vm/swappiness")).unwrap(), "60\n");
}

#[test]
fn apply_reports_what_it_could_not_change() {
    let copy = tempfile::tempdir().unwrap();
    let root = copy.path();
    copy_tree(&fixture("vm-2vcpu-virtio"), root);
    let items = tune::check(root, &probe_at(root, &["/work/corelog-data"]));
    let swappiness: Vec<TuneItem> = items.into_iter().filter(|item| item.check == "swappiness").collect();
    // The attribute disappears between check and apply (as on a kernel without it).
    std::fs::remove_file(root.join("proc/sys/vm/swappiness")).unwrap();
    let outcomes = tune::apply(root, &swappiness);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].result, ApplyResult::Failed);
    assert!(outcomes[0].detail.contains("proc/sys/vm/swappiness"), "{}", outcomes[0].detail);
    assert!(outcomes[0].detail.contains("does not exist"), "{}", outcomes[0].detail);
}
