//! Small readers and pure parsers for sysfs/procfs files.
//!
//! Every reader takes the injectable root (`/` in production, a fixture tree in tests) and a path
//! relative to it. Readers return `None` when a file is missing or unreadable: the probe reports
//! what the kernel exposes and never fails because one attribute is absent (VMs and containers
//! hide many of them).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Joins a root with a path that is relative to it (a leading `/` is ignored so that callers may
/// write kernel paths as they appear in documentation).
pub(crate) fn at(root: &Path, relative: &str) -> PathBuf {
    root.join(relative.trim_start_matches('/'))
}

/// Reads a file below `root` and trims surrounding whitespace; `None` if absent or unreadable.
pub(crate) fn read_trimmed(root: &Path, relative: &str) -> Option<String> {
    fs::read_to_string(at(root, relative)).ok().map(|text| text.trim().to_string())
}

/// Reads and parses an integer attribute; `None` if absent, unreadable or not an integer.
pub(crate) fn read_u64(root: &Path, relative: &str) -> Option<u64> {
    read_trimmed(root, relative).and_then(|text| text.parse().ok())
}

/// Reads a signed integer attribute (sysfs uses `-1` for "unknown" in `speed` and `numa_node`).
pub(crate) fn read_i64(root: &Path, relative: &str) -> Option<i64> {
    read_trimmed(root, relative).and_then(|text| text.parse().ok())
}

/// Names of the entries of a directory below `root`, sorted; empty if the directory is absent.
pub(crate) fn list_dir(root: &Path, relative: &str) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(at(root, relative)) {
        Ok(entries) => {
            entries.filter_map(|entry| entry.ok()).filter_map(|entry| entry.file_name().into_string().ok()).collect()
        }
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The last component of a symlink's target (`device` → `virtio1`, `driver` → `nvme`).
pub(crate) fn link_name(root: &Path, relative: &str) -> Option<String> {
    let target = fs::read_link(at(root, relative)).ok()?;
    target.file_name().and_then(|name| name.to_str()).map(str::to_string)
}

/// Parses a kernel CPU list such as `0-3,8,10-11` (also used for NUMA node lists).
///
/// An empty string is an empty list (the kernel writes an empty line for "none"). Returns `None`
/// on malformed input so a corrupt file is reported as absent rather than as a wrong list.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Some(cpus);
    }
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().ok()?;
                let last: usize = last.trim().parse().ok()?;
                if last < first {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Formats CPU ids as a compact kernel-style list (`0-3,8`), the inverse of [`parse_cpu_list`].
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut index = 0;
    while index < sorted.len() {
        let first = sorted[index];
        let mut last = first;
        while index + 1 < sorted.len() && sorted[index + 1] == last + 1 {
            index += 1;
            last = sorted[index];
        }
        parts.push(if first == last { first.to_string() } else { format!("{first}-{last}") });
        index += 1;
    }
    parts.join(",")
}

/// Picks the selected entry of a sysfs choice file: `none [mq-deadline] kyber` → `mq-deadline`.
/// A file without brackets (a fixture after `apply`, or a kernel attribute with a single value)
/// yields its whole trimmed content.
pub fn parse_selected(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match (text.find('['), text.find(']')) {
        (Some(open), Some(close)) if open < close => Some(text[open + 1..close].to_string()),
        _ => Some(text.to_string()),
    }
}

/// Lists every choice of a sysfs choice file, brackets removed.
pub fn parse_choices(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|word| word.trim_matches(|c| c == '[' || c == ']').to_string())
        .filter(|word| !word.is_empty())
        .collect()
}

/// Parses a cache size such as `48K`, `32768K` or `2M` into bytes.
pub fn parse_cache_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, multiplier) = match text.chars().last()? {
        'K' | 'k' => (&text[..text.len() - 1], 1024),
        'M' | 'm' => (&text[..text.len() - 1], 1024 * 1024),
        'G' | 'g' => (&text[..text.len() - 1], 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    digits.trim().parse::<u64>().ok().map(|n| n * multiplier)
}

/// Parses `/proc/meminfo` or `/sys/devices/system/node/nodeN/meminfo` into bytes per key.
///
/// Node files prefix each line with `Node N `; values in `kB` are converted to bytes, bare counts
/// (`HugePages_Total`) are kept as they are.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let key = match key.trim().strip_prefix("Node ") {
            // "Node 0 MemTotal" → "MemTotal"
            Some(rest) => rest.split_once(' ').map_or(rest, |(_, name)| name).trim(),
            None => key.trim(),
        };
        let mut words = rest.split_whitespace();
        let Some(number) = words.next().and_then(|word| word.parse::<u64>().ok()) else {
            continue;
        };
        let value = match words.next() {
            Some("kB") => number * 1024,
            _ => number,
        };
        values.insert(key.to_string(), value);
    }
    values
}

/// One line of `/proc/interrupts` that names a numbered IRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptLine {
    pub irq: u32,
    /// The device/action name, the last column (`nvme0q1`, `virtio2-input.0`, `eth0-TxRx-3`).
    pub name: String,
    /// Interrupts taken so far, summed over all CPUs.
    pub count_total: u64,
}

/// Parses `/proc/interrupts`, keeping only numbered IRQs (not `NMI`, `LOC`, …).
pub fn parse_interrupts(text: &str) -> Vec<InterruptLine> {
    let mut lines = text.lines();
    let cpu_columns = lines.next().map(|header| header.split_whitespace().count()).unwrap_or(0);
    let mut result = Vec::new();
    for line in lines {
        let Some((label, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = label.trim().parse::<u32>() else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let counts = words.iter().take(cpu_columns);
        let count_total = counts.filter_map(|word| word.parse::<u64>().ok()).sum();
        // After the per-CPU counts come the chip name, hwirq/trigger, then the action name(s).
        let Some(name) = words.last() else { continue };
        if words.len() <= cpu_columns {
            continue;
        }
        result.push(InterruptLine { irq, name: name.to_string(), count_total });
    }
    result
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// `major:minor` of the mounted device (`0:xx` for virtual and some btrfs mounts).
    pub major_minor: String,
    pub mount_point: PathBuf,
    pub filesystem: String,
    /// The mount source, such as `/dev/nvme0n1p2`.
    pub source: String,
}

/// Parses `/proc/self/mountinfo` (see proc(5)); octal escapes such as `\040` are decoded.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split_whitespace().collect();
        let tail: Vec<&str> = after.split_whitespace().collect();
        if fields.len() < 5 || tail.len() < 2 {
            continue;
        }
        mounts.push(MountInfo {
            major_minor: fields[2].to_string(),
            mount_point: PathBuf::from(unescape_octal(fields[4])),
            filesystem: tail[0].to_string(),
            source: tail[1].to_string(),
        });
    }
    mounts
}

fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[index + 1..index + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("\n"), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn selected_choice_and_choices() {
        assert_eq!(parse_selected("none [mq-deadline] kyber bfq \n").as_deref(), Some("mq-deadline"));
        assert_eq!(parse_selected("madvise\n").as_deref(), Some("madvise"));
        assert_eq!(parse_choices("always [madvise] never"), vec!["always", "madvise", "never"]);
    }

    #[test]
    fn cache_sizes() {
        assert_eq!(parse_cache_size("48K"), Some(48 * 1024));
        assert_eq!(parse_cache_size("32768K"), Some(32 * 1024 * 1024));
        assert_eq!(parse_cache_size("2M"), Some(2 * 1024 * 1024));
        assert_eq!(parse_cache_size("K"), None);
    }

    #[test]
    fn meminfo_system_and_node() {
        let system = parse_meminfo("MemTotal:       24684092 kB\nHugePages_Total:       4\n");
        assert_eq!(system.get("MemTotal"), Some(&(24684092 * 1024)));
        assert_eq!(system.get("HugePages_Total"), Some(&4));
        let node = parse_meminfo("Node 1 MemTotal:        5204180 kB\n");
        assert_eq!(node.get("MemTotal"), Some(&(5204180 * 1024)));
    }

    #[test]
    fn interrupts_keep_numbered_irqs_with_names() {
        let text = "           CPU0       CPU1       \n\
            36:          0       7003 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n\
            NMI:          0          0   Non-maskable interrupts\n\
            ERR:          0\n";
        let lines = parse_interrupts(text);
        assert_eq!(lines, vec![InterruptLine { irq: 36, name: "virtio1-req.0".into(), count_total: 7003 }]);
    }

    #[test]
    fn mountinfo_lines() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
                    90 27 259:2 / /var/lib/my\\040data rw - xfs /dev/nvme0n1p2 rw\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].major_minor, "254:0");
        assert_eq!(mounts[1].mount_point, PathBuf::from("/var/lib/my data"));
        assert_eq!(mounts[1].filesystem, "xfs");
        assert_eq!(mounts[1].source, "/dev/nvme0n1p2");
    }
}
