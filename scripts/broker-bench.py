#!/usr/bin/env python3
"""The standard broker scenarios in one command.

Starts a release `corelog` broker with one shard pinned to CPU 0 (unless --brokers names an
external Kafka-compatible broker), measures the data device's O_DIRECT sequential write
bandwidth in the same run (`corelog hardware iotune`), runs `corelog bench` pinned to the
other CPU for each standard workload, and rewrites the "Broker scenarios" section of
docs/benchmarks.md with the figures, the ratios to the device limit and the targets.

    python3 scripts/broker-bench.py [--brokers HOST:PORT] [--duration 20] [--backlog-gib 4]
                                    [--runs 1] [--no-docs]

With --runs N each workload runs N times and the median run (by its headline figure) is
reported. Needs `cargo build --release -p corelog-tools --bin corelog` first.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORELOG = os.path.join(ROOT, "target", "release", "corelog")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
START, END = "<!-- broker-bench:start -->", "<!-- broker-bench:end -->"

# (workload, headline key, what the issue asks)
SCENARIOS = [
    ("max-1kb", "produce_mb", "max-rate produce 1 x 8 partitions, 1 KiB, acks=all: >= 60 % of the device's write bandwidth"),
    ("fixed-50mb", "e2e_p99", "fixed 50 MB/s: end-to-end p99 <= 3 ms, p99.9 <= 8 ms"),
    ("max-100b", "produce_msgs", "100-byte messages, max rate: >= 1,000,000 msg/s"),
    ("backlog-4gb", "consume_mb", "drain a 4 GiB backlog (--backlog-gib) with one consumer: >= 1.5 GB/s"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_write_mb(data_dir):
    out = os.path.join(data_dir, "io-profile.json")
    subprocess.run([CORELOG, "hardware", "iotune", "--data-dir", data_dir, "--duration", "20s",
                    "--output", out, "--format", "json"], check=True, stdout=subprocess.DEVNULL)
    profile = json.load(open(out))
    bandwidth = profile.get("write_bandwidth_bytes_per_sec")
    return (bandwidth / 1e6 if bandwidth else None), profile


def cpu_seconds(pid):
    """CPU time of a process and all its threads (io_uring workers included), in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_bench(brokers, workload, duration, backlog_bytes, cpus, broker_pid=None):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    args = [CORELOG, "bench", "--brokers", brokers, "--workload", workload, "--quiet", "--json", path,
            "--cpus", cpus, "--threads", "1"]
    if workload.startswith("backlog"):
        args += ["--backlog-bytes", str(backlog_bytes)]
    else:
        args += ["--duration", str(duration), "--warmup", "5"]
    started, cpu_before = time.time(), cpu_seconds(broker_pid) if broker_pid else None
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    result = json.load(open(path))
    os.unlink(path)
    if broker_pid:
        # Over the whole run (warm-up and topic creation included), as a share of one core.
        result["broker_cpu_percent"] = 100 * (cpu_seconds(broker_pid) - cpu_before) / (time.time() - started)
    return result


def figures(r):
    p, c, e = r["produce"], r["consume"], r["e2e"]["latency_ms"]
    return {
        "produce_mb": p["mb_per_sec"], "produce_msgs": p["messages_per_sec"],
        "publish_p50": p["latency_ms"]["p50"], "publish_p99": p["latency_ms"]["p99"],
        "publish_p999": p["latency_ms"]["p999"], "consume_mb": c["mb_per_sec"],
        "e2e_p50": e["p50"], "e2e_p99": e["p99"], "e2e_p999": e["p999"],
        "client_cpu": r["client"]["cpu_percent_of_one_core"], "broker_cpu": r.get("broker_cpu_percent"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--backlog-gib", type=float, default=4)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(CORELOG):
        sys.exit("build first: cargo build --release -p corelog-tools --bin corelog")
    work = tempfile.mkdtemp(prefix="broker-bench-", dir=ROOT)
    broker = None
    try:
        device_mb, _ = device_write_mb(os.path.join(work, "iotune"))
        brokers = args.brokers
        if not brokers:
            port = free_port()
            brokers = f"127.0.0.1:{port}"
            log = open(os.path.join(work, "broker.log"), "w")
            broker = subprocess.Popen(["taskset", "-c", "0", CORELOG, "start", "--cores", "1", "--data-dir",
                                       os.path.join(work, "data"), "--listen", brokers, "--admin-listen", "none"],
                                      stdout=log, stderr=subprocess.STDOUT)
            deadline = time.time() + 60
            while "corelog ready" not in open(os.path.join(work, "broker.log")).read():
                if time.time() > deadline or broker.poll() is not None:
                    sys.exit("the broker did not start: see " + os.path.join(work, "broker.log"))
                time.sleep(0.2)
        rows = []
        for workload, headline, target in SCENARIOS:
            runs = []
            for _ in range(args.runs):
                runs.append(run_bench(brokers, workload, args.duration, int(args.backlog_gib * (1 << 30)), "1",
                                      broker.pid if broker else None))
                print(f"{workload}: {figures(runs[-1])}", file=sys.stderr)
            values = [figures(r)[headline] for r in runs]
            median = statistics.median_low(values)
            chosen = runs[values.index(median)]
            rows.append((workload, target, figures(chosen), chosen))
        hardware = rows[0][3]["hardware"]
        section = render(rows, device_mb, hardware, brokers if args.brokers else None, args)
        print(section)
        if not args.no_docs:
            doc = open(DOC).read()
            if START in doc:
                doc = doc[:doc.index(START)] + section + doc[doc.index(END) + len(END):]
            else:
                doc = doc.rstrip("\n") + "\n\n" + section + "\n"
            open(DOC, "w").write(doc)
    finally:
        if broker:
            broker.send_signal(signal.SIGTERM)
            broker.wait(timeout=60)
        subprocess.run(["rm", "-rf", work])


def render(rows, device_mb, hardware, external, args):
    out = [START, "## Broker scenarios (`corelog bench`)", ""]
    out.append("Command: `python3 scripts/broker-bench.py --duration %g --backlog-gib %g --runs %d`%s. "
               % (args.duration, args.backlog_gib, args.runs, f" against {external}" if external else
                  ": a release broker with one shard pinned to CPU 0, `corelog bench` pinned to CPU 1"))
    out.append("Hardware: %s, %s online CPUs, %.1f GiB, kernel %s. Device limit measured in the same run "
               "(`corelog hardware iotune`, O_DIRECT sequential write): **%s MB/s**."
               % (hardware.get("cpu_model"), hardware.get("online_cpus"),
                  (hardware.get("memory_bytes") or 0) / (1 << 30), hardware.get("kernel"),
                  "%.0f" % device_mb if device_mb else "unknown"))
    out.append("")
    out.append("| workload | produce MB/s | msg/s | publish p50 / p99 / p99.9 ms | e2e p50 / p99 / p99.9 ms "
               "| consume MB/s | MB/s / device | client CPU % | broker CPU % | broker CPU ms per MB | target |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    def ms(f, kind):
        values = [f[f"{kind}_p50"], f[f"{kind}_p99"], f[f"{kind}_p999"]]
        return "-" if not any(values) else " / ".join(str(v) for v in values)

    for workload, target, f, _ in rows:
        ratio = f"{f['produce_mb'] / device_mb:.2f}" if device_mb else "-"
        if workload.startswith("backlog"):
            ratio = f"{f['consume_mb'] / device_mb:.2f} (consume)" if device_mb else "-"
        broker_cpu, per_mb = "-", "-"
        if f["broker_cpu"] is not None:
            broker_cpu = f"{f['broker_cpu']:.0f}"
            p, c = f["produce_mb"], f["consume_mb"]
            if p and c:
                # The backlog run fills, then drains: each byte moves once in each phase.
                seconds_per_mb = (1 / p + 1 / c) / 2 if workload.startswith("backlog") else 1 / (p + c)
                per_mb = f"{10 * f['broker_cpu'] * seconds_per_mb:.2f}"
        out.append(f"| {workload} | {f['produce_mb']:.1f} | {f['produce_msgs']:,.0f} | {ms(f, 'publish')} | "
                   f"{ms(f, 'e2e')} | {f['consume_mb']:.1f} | {ratio} | {f['client_cpu']:.0f} | {broker_cpu} | "
                   f"{per_mb} | {target} |")
    out.append("")
    out.append(END)
    return "\n".join(out)


if __name__ == "__main__":
    main()
