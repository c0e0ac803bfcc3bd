//! The probe on captured sysfs/procfs trees (`tests/fixtures/<machine>/{sys,proc}`).

// Helpers outside #[test] functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use corelog_hardware::probe::{DiskKind, Machine, ProcessLimits, Rlimit, probe_with_limits};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn limits() -> ProcessLimits {
    ProcessLimits {
        open_files: Rlimit { soft: Some(1024), hard: Some(524288) },
        locked_memory_bytes: Rlimit { soft: Some(8 << 20), hard: Some(8 << 20) },
    }
}

fn probe_fixture(name: &str, data_dirs: &[&str]) -> Machine {
    let dirs: Vec<PathBuf> = data_dirs.iter().map(PathBuf::from).collect();
    probe_with_limits(&fixture(name), &dirs, limits()).unwrap()
}

#[test]
fn two_socket_server_topology_and_memory() {
    let machine = probe_fixture("server-2s-nvme", &[]);
    let cpus = &machine.cpus;
    assert_eq!(cpus.online, 32);
    assert_eq!(cpus.sockets, 2);
    assert_eq!(cpus.cores, 16);
    assert_eq!(cpus.threads_per_core, 2);
    assert_eq!(cpus.isolated_list, vec![15, 31]);
    assert_eq!(cpus.smt_active, Some(true));
    assert_eq!(cpus.governor.as_deref(), Some("powersave"));
    let cpu9 = &cpus.list[9];
    assert_eq!((cpu9.socket, cpu9.core, cpu9.numa_node), (Some(1), Some(1), Some(1)));
    assert_eq!(cpu9.siblings, vec![9, 25]);
    assert_eq!(cpu9.max_frequency_khz, Some(3_500_000));
    let l3 = cpus.caches.iter().find(|c| c.level == 3).unwrap();
    assert_eq!(l3.size_bytes, Some(30 * 1024 * 1024));
    assert_eq!((l3.instances, l3.cpus_per_instance), (2, 16));
    let l1d = cpus.caches.iter().find(|c| c.level == 1 && c.kind == "Data").unwrap();
    assert_eq!((l1d.instances, l1d.cpus_per_instance), (16, 2));

    assert_eq!(machine.memory_bytes, Some(263_921_664 * 1024));
    assert_eq!(machine.numa_nodes.len(), 2);
    assert_eq!(machine.numa_nodes[1].cpus[..3], [8, 9, 10]);
    assert_eq!(machine.numa_nodes[1].memory_bytes, Some(132_109_308 * 1024));
    assert_eq!(machine.memory.transparent_hugepages.as_deref(), Some("always"));
    assert_eq!(machine.memory.transparent_hugepages_defrag.as_deref(), Some("madvise"));
    assert_eq!(machine.memory.swappiness, Some(60));
    assert_eq!(machine.limits.aio_max_nr, Some(65536));
    assert_eq!(machine.limits.io_uring_disabled, Some(0));
    assert_eq!(machine.limits.open_files.soft, Some(1024));
    assert_eq!(machine.clocksource.current.as_deref(), Some("tsc"));
    assert_eq!(machine.clocksource.available, vec!["tsc", "hpet", "acpi_pm"]);
}

#[test]
fn two_socket_server_disks_map_data_dirs_through_partitions() {
    let machine = probe_fixture("server-2s-nvme", &["/var/lib/corelog/data", "/mnt/nvme1/corelog", "/run/corelog"]);
    assert_eq!(machine.disks.len(), 2, "{:#?}", machine.disks);
    let nvme0 = &machine.disks[0];
    assert_eq!(nvme0.device, "nvme0n1");
    assert_eq!(nvme0.partition.as_deref(), Some("nvme0n1p1"));
    assert_eq!(nvme0.major_minor, "259:1");
    assert_eq!(nvme0.kind, DiskKind::Nvme);
    assert!(nvme0.nvme);
    assert_eq!(nvme0.model.as_deref(), Some("SAMSUNG MZQL23T8HCLS-00A07"));
    assert_eq!(nvme0.logical_block_size, Some(4096));
    assert_eq!(nvme0.rotational, Some(false));
    assert_eq!(nvme0.scheduler.as_deref(), Some("none"));
    assert_eq!(nvme0.nr_requests, Some(1023));
    assert_eq!(nvme0.hardware_queues, Some(8));
    assert_eq!(nvme0.write_cache.as_deref(), Some("write through"));
    assert_eq!(nvme0.discard_supported, Some(true));
    assert_eq!(nvme0.numa_node, Some(0));
    // nvme0q0 (admin) and eight I/O queues, not nvme1's or nvme2's.
    assert_eq!(nvme0.irqs.len(), 9);
    assert!(nvme0.irqs.iter().all(|irq| irq.name.starts_with("nvme0q")));
    assert_eq!(nvme0.irqs[1].affinity, Some(vec![0, 1, 16, 17]));
    assert_eq!(nvme0.mounts[0].filesystem, "xfs");
    assert_eq!(nvme0.mounts[0].mount_point, PathBuf::from("/var/lib/corelog"));

    let nvme1 = &machine.disks[1];
    assert_eq!(nvme1.device, "nvme1n1");
    assert_eq!(nvme1.partition, None);
    assert_eq!(nvme1.logical_block_size, Some(512));
    assert_eq!(nvme1.numa_node, Some(1));
    assert_eq!(nvme1.fua, Some(true));

    // tmpfs has no block device: reported, not fatal.
    assert_eq!(machine.unresolved_data_dirs.len(), 1);
    assert!(machine.unresolved_data_dirs[0].reason.contains("tmpfs"));
}

#[test]
fn two_socket_server_nic_and_irqs() {
    let machine = probe_fixture("server-2s-nvme", &[]);
    // lo and docker0 are virtual.
    assert_eq!(machine.nics.len(), 1);
    let nic = &machine.nics[0];
    assert_eq!(nic.name, "ens1f0");
    assert_eq!(nic.device.as_deref(), Some("0000:3b:00.0"));
    assert_eq!(nic.driver.as_deref(), Some("mlx5_core"));
    assert_eq!(nic.speed_mbps, Some(25000));
    assert_eq!(nic.mtu, Some(9000));
    assert_eq!((nic.rx_queues, nic.tx_queues), (8, 8));
    assert_eq!(nic.numa_node, Some(0));
    assert_eq!(nic.irqs.len(), 9);
    let comp3 = nic.irqs.iter().find(|irq| irq.name == "mlx5_comp3@pci:0000:3b:00.0").unwrap();
    assert_eq!(comp3.irq, 203);
    assert_eq!(comp3.affinity, Some(vec![0]));
}

#[test]
fn small_vm_like_the_dev_box() {
    let machine = probe_fixture("vm-2vcpu-virtio", &["/work/corelog-data"]);
    assert_eq!(machine.cpus.online, 2);
    assert_eq!(machine.cpus.sockets, 1);
    assert_eq!(machine.cpus.cores, 2);
    assert_eq!(machine.cpus.threads_per_core, 1);
    assert_eq!(machine.cpus.governor, None);
    assert_eq!(machine.numa_nodes.len(), 1);
    assert_eq!(machine.memory_bytes, Some(24_684_092 * 1024));
    assert_eq!(machine.memory.transparent_hugepages.as_deref(), Some("madvise"));
    let vda = &machine.disks[0];
    assert_eq!(vda.device, "vda");
    assert_eq!(vda.kind, DiskKind::Virtio);
    assert!(!vda.nvme);
    assert_eq!(vda.model, None);
    assert_eq!(vda.size_bytes, Some(256 << 30));
    assert_eq!(vda.logical_block_size, Some(512));
    assert_eq!(vda.physical_block_size, Some(4096));
    assert_eq!(vda.rotational, Some(true));
    assert_eq!(vda.scheduler.as_deref(), Some("mq-deadline"));
    assert_eq!(vda.schedulers_available, vec!["none", "mq-deadline", "kyber", "bfq"]);
    assert_eq!(vda.numa_node, None, "numa_node -1 means no affinity");
    let irq_names: Vec<&str> = vda.irqs.iter().map(|irq| irq.name.as_str()).collect();
    assert_eq!(irq_names, vec!["virtio1-req.0"]);
    assert_eq!(machine.nics.len(), 1);
    let eth0 = &machine.nics[0];
    assert_eq!(eth0.speed_mbps, None, "virtio reports speed -1");
    assert_eq!(eth0.mtu, Some(1400));
    assert_eq!(eth0.driver.as_deref(), Some("virtio_net"));
    let irqs: Vec<u32> = eth0.irqs.iter().map(|irq| irq.irq).collect();
    assert_eq!(irqs, vec![38, 39]);
}

#[test]
fn smt_off_machine_with_offline_siblings_loop_and_sata() {
    let machine = probe_fixture("smt-off-8core", &["/srv/corelog", "/mnt/loop/corelog"]);
    let cpus = &machine.cpus;
    assert_eq!(cpus.online, 8);
    assert_eq!(cpus.offline_list, (8..16).collect::<Vec<_>>());
    assert_eq!(cpus.cores, 8);
    assert_eq!(cpus.threads_per_core, 1);
    assert_eq!(cpus.smt_control.as_deref(), Some("off"));
    assert_eq!(cpus.governor.as_deref(), Some("performance"));
    assert!(!cpus.list[12].online);
    assert_eq!(cpus.list[12].socket, None);
    assert_eq!(machine.memory.huge_pages_total, Some(512));
    assert_eq!(machine.memory.huge_pages_by_size_kb.get(&2048), Some(&512));
    assert_eq!(machine.limits.io_uring_disabled, None);

    assert_eq!(machine.disks.len(), 2);
    let sda = &machine.disks[0];
    assert_eq!((sda.device.as_str(), sda.partition.as_deref()), ("sda", Some("sda2")));
    assert_eq!(sda.kind, DiskKind::Scsi);
    assert_eq!(sda.model.as_deref(), Some("Samsung SSD 870"));
    assert_eq!(sda.nr_requests, Some(64));
    let loop0 = &machine.disks[1];
    assert_eq!(loop0.kind, DiskKind::Loop);
    assert_eq!(loop0.backing_file.as_deref(), Some(Path::new("/var/tmp/corelog-disk.img")));

    let eno1 = &machine.nics[0];
    assert_eq!(eno1.speed_mbps, Some(1000));
    assert_eq!(eno1.driver.as_deref(), Some("igb"));
    assert_eq!(eno1.irqs.len(), 5);
}

#[test]
fn json_has_the_documented_fields() {
    let machine = probe_fixture("vm-2vcpu-virtio", &["/work/corelog-data"]);
    let json = serde_json::to_value(&machine).unwrap();
    assert_eq!(json["cpus"]["online"], 2);
    assert_eq!(json["numa_nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["memory_bytes"], 24_684_092u64 * 1024);
    assert_eq!(json["disks"][0]["logical_block_size"], 512);
    assert_eq!(json["nics"][0]["name"], "eth0");
}

#[test]
fn missing_files_are_absent_fields_not_failures() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("sys/devices/system/cpu")).unwrap();
    let machine = probe_with_limits(empty.path(), &[PathBuf::from("/data")], ProcessLimits::default()).unwrap();
    assert_eq!(machine.cpus.online, 0);
    assert_eq!(machine.memory_bytes, None);
    assert!(machine.disks.is_empty());
    assert_eq!(machine.unresolved_data_dirs.len(), 1);
    assert!(machine.nics.is_empty());
    // A root that is not a sysfs tree at all is an error.
    let not_sysfs = tempfile::tempdir().unwrap();
    assert!(probe_with_limits(not_sysfs.path(), &[], ProcessLimits::default()).is_err());
}

#[test]
fn real_machine_probe_does_not_fail() {
    // This machine's own /sys and /proc: whatever it is, the probe must succeed and find CPUs.
    let machine = corelog_hardware::probe(Path::new("/"), &[std::env::temp_dir()]).unwrap();
    assert!(machine.cpus.online >= 1);
    assert!(machine.memory_bytes.unwrap_or(0) > 0);
}
