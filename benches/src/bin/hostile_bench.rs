//! `hostile-bench [--quick] [--repeat N] [--unbound] [--connection-rate N] [DIR]`: what each hostile load of
//! `tools/tests/hostile_clients.rs` costs a well-behaved producer (idempotent, `acks=all`,
//! 1 KiB messages): its publish latency at a fixed rate and its throughput at full speed, beside
//! the load, as ratios to the quiet baseline. A markdown table for `docs/reliability.md`; the
//! broker runs in this process on one shard (a fresh one per run), the loads and the producer
//! on threads beside it: by default the shard on the first CPU and the clients on the others
//! (`--unbound`: all of them anywhere); `--connection-rate N` sets the broker's
//! `max.connection.creation.rate`; `--only loris,idle,huge,noise,unread` measures those loads
//! (and the quiet baseline) only.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark harness

use std::time::Duration;

use corelog_benches::hostile::{Attack, CalmFigures, calm_client, start_attack};
use corelog_benches::{BenchArgs, hardware_report, median};

fn main() {
    let BenchArgs { quick, repeat, base, .. } = BenchArgs::parse();
    raise_open_files_limit();
    CPUS.set(allowed_cpus()).expect("set once");
    let args: Vec<String> = std::env::args().collect();
    let unbound = args.iter().any(|a| a == "--unbound");
    let connection_rate: Option<f64> =
        args.iter().position(|a| a == "--connection-rate").and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok());
    SETUP.set((unbound, connection_rate)).expect("set once");
    let (duration, rate, idle) =
        if quick { (Duration::from_millis(300), 200, 50) } else { (Duration::from_secs(5), 2_000, 9_000) };
    let attacks = [
        Attack::Quiet,
        Attack::SlowLoris { connections: if quick { 20 } else { 200 } },
        Attack::IdleConnections { connections: idle },
        Attack::HugeFrames,
        Attack::RandomBytes { senders: 2 },
        Attack::NeverReads { clients: 4 },
    ];
    let only: Option<Vec<String>> = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].split(',').map(str::to_string).collect());
    let short = |attack: &Attack| match attack {
        Attack::Quiet => "quiet",
        Attack::SlowLoris { .. } => "loris",
        Attack::IdleConnections { .. } => "idle",
        Attack::HugeFrames => "huge",
        Attack::RandomBytes { .. } => "noise",
        Attack::NeverReads { .. } => "unread",
    };
    let attacks: Vec<Attack> = attacks
        .into_iter()
        .filter(|a| matches!(a, Attack::Quiet) || only.as_ref().is_none_or(|o| o.iter().any(|n| n == short(a))))
        .collect();
    println!("## A well-behaved producer beside hostile clients\n");
    println!("{}\n", hardware_report(&base));
    println!(
        "One broker shard in the bench process; producer: idempotent, acks=all, 1 KiB messages, latency at \
         {rate} msg/s for {duration:?} (from scheduled send times), throughput at full speed for {duration:?}. \
         Median of {repeat} runs, each on a fresh broker. CPUs: {}; connection creation rate limit: {}.\n",
        if unbound { "broker and clients unbound" } else { "broker shard on the first, clients on the others" },
        connection_rate.map_or("none".to_string(), |r| format!("{r}/s")),
    );
    println!("| load | msg/s at full speed | × quiet | p50 ms | p99 ms | p99 × quiet | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut quiet: Option<(f64, f64)> = None;
    for attack in attacks {
        let runs: Vec<CalmFigures> = (0..repeat).map(|run| measure(attack, &base, run, rate, duration)).collect();
        let throughput = median(runs.iter().map(|r| r.max_rate_messages_per_sec).collect());
        let p50 = median(runs.iter().map(|r| r.latency_ms_p50).collect());
        let p99 = median(runs.iter().map(|r| r.latency_ms_p99).collect());
        let max = median(runs.iter().map(|r| r.latency_ms_max).collect());
        let (quiet_throughput, quiet_p99) = *quiet.get_or_insert((throughput, p99));
        println!(
            "| {} | {throughput:.0} | {:.2} | {p50:.2} | {p99:.2} | {:.2} | {max:.1} |",
            attack.describe(),
            throughput / quiet_throughput,
            p99 / quiet_p99,
        );
    }
}

fn measure(attack: Attack, base: &std::path::Path, run: usize, rate: u32, duration: Duration) -> CalmFigures {
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    // The broker's shard on the first CPU, every client (hostile or not) on the others: what is
    // measured is what the load costs the broker, not the clients' own CPU.
    let cpus = CPUS.get().expect("CPUs read at start");
    let &(unbound, connection_rate) = SETUP.get().expect("set at start");
    set_affinity(if unbound { cpus } else { &cpus[..1] });
    let broker = corelog_benches::hostile::bench_broker(dir.path(), connection_rate);
    set_affinity(if cpus.len() > 1 && !unbound { &cpus[1..] } else { &cpus[..] });
    let address = broker.address.to_string();
    corelog_benches::hostile::fill_fetch_topic(&address, "fetched");
    let running = start_attack(attack, &address, "fetched");
    std::thread::sleep(duration / 5);
    let figures = calm_client(&address, &format!("calm-{run}"), rate, duration);
    running.stop();
    broker.stop().expect("stop the broker");
    figures
}

/// `--unbound` and `--connection-rate`.
static SETUP: std::sync::OnceLock<(bool, Option<f64>)> = std::sync::OnceLock::new();

/// The CPUs this process may use, read before any thread is bound.
static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    // SAFETY: CPU_ISSET reads the set filled above.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Binds the calling thread (and the threads it starts from now on) to `cpus`.
fn set_affinity(cpus: &[usize]) {
    // SAFETY: building and applying a cpu_set_t we own to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Idle connections hold a descriptor at each end in this process.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a struct we own; the soft limit may rise to the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
