//! CLI adapter: the `corelog hardware probe|iotune|tune` subcommands.
//!
//! The tools crate mounts [`HardwareCommand`] as a clap subcommand and calls [`run`]. Output goes
//! to stdout as an aligned table (default) or JSON; an error is one line on stderr and exit 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::iotune::{self, IoProfile, IotuneConfig, IotuneError};
use crate::plan::{format_bytes, plan_shards};
use crate::probe::{Machine, ProbeError, probe};
use crate::sysfs::format_cpu_list;
use crate::tune::{self, ApplyOutcome, ApplyResult, TuneItem, TuneStatus};

/// Data dir used when none is given.
pub const DEFAULT_DATA_DIR: &str = "./corelog-data";

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable aligned table.
    #[default]
    Table,
    /// Machine-readable JSON (pretty-printed).
    Json,
}

/// `corelog hardware …`
#[derive(clap::Subcommand, Debug)]
pub enum HardwareCommand {
    /// Show CPUs, NUMA, memory, the data dir's disk, NICs, limits, and the shard plan.
    Probe {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Read sysfs/procfs below this root instead of `/` (captured trees, tests).
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Measure the data dir's device and write its I/O profile (DATA_DIR/io-profile.json).
    Iotune {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Budget of the timed phases: `40`, `40s`, `2m`, `1500ms` (default 40 s; the first
        /// write of the 1 GiB scratch file comes on top).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Where to write the profile (default DATA_DIR/io-profile.json).
        #[arg(long)]
        output: Option<PathBuf>,
        /// A few-second smoke run on a 16 MiB file; figures are indicative only.
        #[arg(long)]
        tiny: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Check (default) or apply the kernel and process settings that matter.
    Tune {
        /// List each setting with its current and recommended value (the default).
        #[arg(long, conflicts_with = "apply")]
        check: bool,
        /// Change what can be changed (needs root), then show the result.
        #[arg(long)]
        apply: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Read and write sysfs/procfs below this root instead of `/`.
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
}

/// Errors of the CLI adapter.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Iotune(#[from] IotuneError),
    #[error("encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// Runs a hardware subcommand; prints results on stdout, one error line on stderr (exit 1).
pub fn run(command: HardwareCommand) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run_to(command, &mut out, &mut |line| eprintln!("iotune: {line}")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = out.flush();
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// [`run`] with the output stream and progress sink injected (tests).
pub fn run_to(command: HardwareCommand, out: &mut dyn Write, progress: &mut dyn FnMut(&str)) -> Result<(), CliError> {
    match command {
        HardwareCommand::Probe { format, data_dir, root } => {
            let machine = probe(&root, &[data_dir])?;
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&machine)?)?,
                Format::Table => {
                    write!(out, "{}", machine_table(&machine))?;
                    writeln!(out)?;
                    write!(out, "{}", plan_shards(&machine, None))?;
                }
            }
        }
        HardwareCommand::Iotune { data_dir, duration, output, tiny, format } => {
            let mut config =
                if tiny { IotuneConfig::tiny() } else { IotuneConfig::full(IotuneConfig::DEFAULT_DURATION) };
            if let Some(duration) = duration {
                config.duration = duration;
            }
            let mut profile = iotune::run(&data_dir, &config, progress)?;
            profile.device = probe(Path::new("/"), std::slice::from_ref(&data_dir))
                .ok()
                .and_then(|machine| machine.disks.first().map(|disk| disk.device.clone()));
            let path = output.unwrap_or_else(|| IoProfile::default_path(&data_dir));
            profile.save(&path)?;
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&profile)?)?,
                Format::Table => {
                    write!(out, "{}", profile_table(&profile))?;
                    writeln!(out, "profile written to {}", path.display())?;
                }
            }
        }
        HardwareCommand::Tune { check: _, apply, format, data_dir, root } => {
            let data_dirs = [data_dir];
            let machine = probe(&root, &data_dirs)?;
            let items = tune::check(&root, &machine);
            if !apply {
                match format {
                    Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&items)?)?,
                    Format::Table => write!(out, "{}", tune_table(&items))?,
                }
                return Ok(());
            }
            let outcomes = tune::apply(&root, &items);
            let after = tune::check(&root, &probe(&root, &data_dirs)?);
            match format {
                Format::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "applied": outcomes,
                        "after": after,
                    }))?
                )?,
                Format::Table => {
                    write!(out, "{}", outcome_table(&outcomes))?;
                    writeln!(out)?;
                    write!(out, "{}", tune_table(&after))?;
                }
            }
            let failed = outcomes.iter().filter(|o| o.result == ApplyResult::Failed).count();
            if failed > 0 {
                return Err(CliError::Failed(format!("{failed} of {} fixes failed (details above)", outcomes.len())));
            }
        }
    }
    Ok(())
}

/// Parses `40`, `40s`, `2m`, `1500ms` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale_ms) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1000)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60_000)
    } else {
        (text, 1000)
    };
    let value: u64 =
        number.trim().parse().map_err(|_| format!("invalid duration {text:?}: use e.g. 40, 40s, 2m or 1500ms"))?;
    if value == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_millis(value * scale_ms))
}

/// Aligned columns; the last column is not padded.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate().take(columns) {
            widths[index] = widths[index].max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let line = |cells: Vec<&str>, text: &mut String| {
        let mut rendered = String::new();
        for (index, cell) in cells.iter().enumerate() {
            if index + 1 == cells.len() {
                rendered.push_str(cell);
            } else {
                rendered.push_str(cell);
                let pad = widths[index] - cell.chars().count() + 2;
                rendered.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(rendered.trim_end());
        text.push('\n');
    };
    line(headers.to_vec(), &mut text);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut text);
    }
    text
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

fn list_or_dash(cpus: &[usize]) -> String {
    if cpus.is_empty() { "-".into() } else { format_cpu_list(cpus) }
}

fn machine_table(machine: &Machine) -> String {
    let cpus = &machine.cpus;
    let caches: Vec<String> = cpus
        .caches
        .iter()
        .map(|cache| {
            let kind = match cache.kind.as_str() {
                "Data" => "d",
                "Instruction" => "i",
                _ => "",
            };
            format!("L{}{kind} {} x{}", cache.level, cache.size_bytes.map_or("?".into(), format_bytes), cache.instances)
        })
        .collect();
    let nodes: Vec<String> = machine
        .numa_nodes
        .iter()
        .map(|node| {
            format!(
                "node {}: CPUs {}, {}",
                node.id,
                list_or_dash(&node.cpus),
                node.memory_bytes.map_or("?".into(), format_bytes)
            )
        })
        .collect();
    let memory = &machine.memory;
    let limits = &machine.limits;
    let rlimit = |limit: crate::probe::Rlimit, bytes: bool| {
        let show = |v: Option<u64>| match v {
            None => "unlimited".to_string(),
            Some(v) if bytes => format_bytes(v),
            Some(v) => v.to_string(),
        };
        format!("{}/{}", show(limit.soft), show(limit.hard))
    };
    let io_uring = match limits.io_uring_disabled {
        None | Some(0) => "enabled",
        Some(1) => "restricted to io_uring_group",
        Some(_) => "disabled",
    };
    let rows = vec![
        vec![
            "cpus".into(),
            format!(
                "{} online ({} sockets, {} cores, {} threads/core, SMT {}), isolated {}, offline {}",
                cpus.online,
                cpus.sockets,
                cpus.cores,
                cpus.threads_per_core,
                cpus.smt_control.as_deref().unwrap_or("?"),
                list_or_dash(&cpus.isolated_list),
                list_or_dash(&cpus.offline_list)
            ),
        ],
        vec!["governor".into(), or_dash(cpus.governor.clone())],
        vec!["caches".into(), caches.join(", ")],
        vec![
            "memory".into(),
            format!(
                "{}, THP {} (defrag {}), swappiness {}, huge pages {} x {}",
                machine.memory_bytes.map_or("?".into(), format_bytes),
                or_dash(memory.transparent_hugepages.clone()),
                or_dash(memory.transparent_hugepages_defrag.clone()),
                or_dash(memory.swappiness),
                or_dash(memory.huge_pages_total),
                memory.huge_page_size_bytes.map_or("?".into(), format_bytes)
            ),
        ],
        vec!["numa".into(), if nodes.is_empty() { "-".into() } else { nodes.join("; ") }],
        vec![
            "clocksource".into(),
            format!(
                "{} (available: {})",
                or_dash(machine.clocksource.current.clone()),
                machine.clocksource.available.join(" ")
            ),
        ],
        vec![
            "limits".into(),
            format!(
                "open files {}, memlock {}, aio-max-nr {}, io_uring {io_uring}",
                rlimit(limits.open_files, false),
                rlimit(limits.locked_memory_bytes, true),
                or_dash(limits.aio_max_nr)
            ),
        ],
    ];
    let mut text = render_table(&["MACHINE", ""], &rows);
    text.push('\n');
    let disk_rows: Vec<Vec<String>> = machine
        .disks
        .iter()
        .map(|disk| {
            vec![
                disk.device.clone(),
                or_dash(disk.partition.clone()),
                format!("{:?}", disk.kind).to_lowercase(),
                or_dash(disk.model.clone()),
                disk.size_bytes.map_or("-".into(), format_bytes),
                format!("{}/{}", or_dash(disk.logical_block_size), or_dash(disk.physical_block_size)),
                or_dash(disk.rotational.map(|r| if r { "yes" } else { "no" })),
                or_dash(disk.scheduler.clone()),
                or_dash(disk.nr_requests),
                or_dash(disk.hardware_queues),
                or_dash(disk.write_cache.clone()),
                or_dash(disk.discard_supported.map(|d| if d { "yes" } else { "no" })),
                or_dash(disk.numa_node),
                disk.mounts
                    .iter()
                    .map(|m| format!("{} ({})", m.data_dir.display(), m.filesystem))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    text.push_str(&render_table(
        &[
            "DISK",
            "PART",
            "KIND",
            "MODEL",
            "SIZE",
            "LBS/PBS",
            "ROT",
            "SCHED",
            "NR_REQ",
            "HWQ",
            "CACHE",
            "DISCARD",
            "NODE",
            "DATA DIRS",
        ],
        &disk_rows,
    ));
    for unresolved in &machine.unresolved_data_dirs {
        text.push_str(&format!("data dir {}: {}\n", unresolved.data_dir.display(), unresolved.reason));
    }
    text.push('\n');
    let nic_rows: Vec<Vec<String>> = machine
        .nics
        .iter()
        .map(|nic| {
            let mut irq_cpus = std::collections::BTreeSet::new();
            for irq in &nic.irqs {
                irq_cpus.extend(irq.affinity.iter().flatten());
            }
            let irq_cpus: Vec<usize> = irq_cpus.into_iter().collect();
            vec![
                nic.name.clone(),
                or_dash(nic.driver.clone()),
                nic.speed_mbps.map_or("-".into(), |s| format!("{s} Mb/s")),
                or_dash(nic.mtu),
                format!("{}/{}", nic.rx_queues, nic.tx_queues),
                or_dash(nic.numa_node),
                format!("{} on CPUs {}", nic.irqs.len(), list_or_dash(&irq_cpus)),
            ]
        })
        .collect();
    text.push_str(&render_table(&["NIC", "DRIVER", "SPEED", "MTU", "RX/TX", "NODE", "IRQS"], &nic_rows));
    text
}

fn megabytes_per_sec(bytes: u64) -> String {
    format!("{:.0} MB/s", bytes as f64 / 1e6)
}

fn profile_table(profile: &IoProfile) -> String {
    let headline = format!("{} qd{}", format_bytes(profile.headline_block_size_bytes), profile.headline_queue_depth);
    let latency = profile.fdatasync_latency_us;
    let knee = |k: iotune::Knee| {
        format!(
            "{} qd{} ({} of peak {})",
            format_bytes(k.block_size_bytes),
            k.queue_depth,
            megabytes_per_sec(k.bandwidth_bytes_per_sec),
            megabytes_per_sec(k.peak_bandwidth_bytes_per_sec)
        )
    };
    let rows = vec![
        vec!["data dir".into(), format!("{} (device {})", profile.data_dir.display(), or_dash(profile.device.clone()))],
        vec![
            "sequential write".into(),
            format!("{} ({headline})", megabytes_per_sec(profile.write_bandwidth_bytes_per_sec)),
        ],
        vec![
            "sequential read".into(),
            format!("{} ({headline})", megabytes_per_sec(profile.read_bandwidth_bytes_per_sec)),
        ],
        vec!["first write (fill)".into(), megabytes_per_sec(profile.fill_write_bandwidth_bytes_per_sec)],
        vec![
            "random read".into(),
            format!(
                "{} IOPS ({} qd{})",
                profile.random_read_iops,
                format_bytes(profile.random_read_block_size_bytes),
                profile.random_read_queue_depth
            ),
        ],
        vec![
            "write+fdatasync".into(),
            format!(
                "p50 {} us, p99 {} us, max {} us ({} samples)",
                latency.p50, latency.p99, latency.max, latency.samples
            ),
        ],
        vec!["write knee".into(), knee(profile.write_knee)],
        vec!["read knee".into(), knee(profile.read_knee)],
        vec![
            "run".into(),
            format!(
                "{:.1} s on a {} scratch file",
                profile.run_duration_ms as f64 / 1000.0,
                format_bytes(profile.file_size_bytes)
            ),
        ],
    ];
    render_table(&["IO PROFILE", ""], &rows)
}

fn status_label(status: TuneStatus) -> &'static str {
    match status {
        TuneStatus::Ok => "ok",
        TuneStatus::NotOk => "NOT OK",
        TuneStatus::Unknown => "unknown",
        TuneStatus::NotApplicable => "n/a",
    }
}

fn tune_table(items: &[TuneItem]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            vec![
                status_label(item.status).into(),
                item.check.clone(),
                item.subject.clone(),
                or_dash(item.current.clone()),
                item.recommended.clone(),
            ]
        })
        .collect();
    let mut text = render_table(&["STATUS", "CHECK", "SUBJECT", "CURRENT", "RECOMMENDED"], &rows);
    let not_ok: Vec<&TuneItem> = items.iter().filter(|item| item.status == TuneStatus::NotOk).collect();
    if !not_ok.is_empty() {
        text.push_str("\nwhy:\n");
        for item in not_ok {
            text.push_str(&format!("- {} ({}): {}\n", item.check, item.subject, item.why));
        }
    }
    text
}

fn outcome_table(outcomes: &[ApplyOutcome]) -> String {
    if outcomes.is_empty() {
        return "nothing to apply\n".into();
    }
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|outcome| {
            vec![
                format!("{:?}", outcome.result).to_lowercase(),
                outcome.check.clone(),
                outcome.subject.clone(),
                outcome.detail.clone(),
            ]
        })
        .collect();
    render_table(&["RESULT", "CHECK", "SUBJECT", "DETAIL"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: HardwareCommand,
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn run_args(args: &[&str]) -> Result<String, CliError> {
        let cli = Cli::try_parse_from(std::iter::once("hardware").chain(args.iter().copied()))
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let mut out = Vec::new();
        run_to(cli.command, &mut out, &mut |_| {})?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("40"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn table_is_aligned() {
        let text = render_table(&["A", "LONGER", "C"], &[vec!["xxxx".into(), "y".into(), "z".into()]]);
        assert_eq!(text, "A     LONGER  C\nxxxx  y       z\n");
    }

    #[test]
    fn probe_json_on_fixture() {
        let root = fixture("server-2s-nvme");
        let text =
            run_args(&["probe", "--format", "json", "--root", &root, "--data-dir", "/var/lib/corelog/data"]).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["cpus"]["online"], 32);
        assert_eq!(json["disks"][0]["device"], "nvme0n1");
    }

    #[test]
    fn probe_table_on_fixture_shows_disk_nic_and_plan() {
        let root = fixture("vm-2vcpu-virtio");
        let text = run_args(&["probe", "--root", &root, "--data-dir", "/work/corelog-data"]).unwrap();
        assert!(text.contains("2 online (1 sockets, 2 cores"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("vda ")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("eth0 ")), "{text}");
        assert!(text.contains("shard plan: 2 shards on CPUs 0-1"), "{text}");
    }

    #[test]
    fn tune_check_on_fixture_and_mutually_exclusive_flags() {
        let root = fixture("server-2s-nvme");
        let text = run_args(&["tune", "--check", "--root", &root]).unwrap();
        assert!(text.lines().any(|l| l.starts_with("NOT OK") && l.contains("transparent_hugepages")), "{text}");
        assert!(text.contains("why:"));
        assert!(run_args(&["tune", "--check", "--apply"]).is_err());
    }

    #[test]
    fn probe_of_a_missing_root_is_one_clear_error() {
        let error = run_args(&["probe", "--root", "/nonexistent/root"]).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/root"), "{error}");
    }
}
