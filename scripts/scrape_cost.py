#!/usr/bin/env python3
"""What a Prometheus scrape costs a running broker.

Usage: scripts/scrape_cost.py [--admin HOST:PORT] [--seconds N]

Reads the broker's own task-delay probe (corelog_reactor_task_delay_seconds: a timer on every
shard every 100 ms, recording how late it ran) over N quiet seconds, then over N seconds of
back-to-back scrapes of /metrics from one client, and prints per phase: scrapes, scrape time
(median, p99), scrape size, and per shard the probe's p99 and max bucket. The broker must be
running (e.g. `corelog start --cores 2`); create the partitions you want measured first.
"""
import argparse
import statistics
import time
import urllib.request


def scrape(admin):
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
        body = response.read().decode()
    return time.perf_counter() - started, body


def delay_buckets(body):
    """{shard: [(le, cumulative count)]} of the task-delay histogram."""
    shards = {}
    for line in body.splitlines():
        if not line.startswith("corelog_reactor_task_delay_seconds_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        fields = dict(part.split("=", 1) for part in labels[labels.index("{") + 1 : -1].split(","))
        le = float(fields["le"].strip('"').replace("+Inf", "inf"))
        shards.setdefault(fields["shard"].strip('"'), []).append((le, float(value)))
    return {shard: sorted(buckets) for shard, buckets in shards.items()}


def quantile_bound(before, after, q):
    """The smallest bucket bound holding quantile q of the observations between two scrapes."""
    deltas = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = deltas[-1][1]
    if total == 0:
        return None, 0
    for le, cumulative in deltas:
        if cumulative >= q * total:
            return le, int(total)
    return float("inf"), int(total)


def phase(admin, seconds, scraping):
    _, first = scrape(admin)
    times, size = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if scraping:
            took, body = scrape(admin)
            times.append(took)
            size = len(body)
        else:
            time.sleep(0.05)
    _, last = scrape(admin)
    before, after = delay_buckets(first), delay_buckets(last)
    shards = {s: (quantile_bound(before[s], after[s], 0.99), quantile_bound(before[s], after[s], 1.0)) for s in after}
    return times, size, shards


def ms(bound):
    return "none" if bound is None else ("> 10 s" if bound == float("inf") else f"≤ {bound * 1000:g} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin", default="127.0.0.1:9644")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    for name, scraping in (("quiet", False), ("scraping", True)):
        times, size, shards = phase(args.admin, args.seconds, scraping)
        line = f"{name:9}"
        if times:
            times.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            line += (
                f" scrapes {len(times)} ({len(times) / args.seconds:.0f}/s), {size / 1024:.0f} KiB,"
                f" median {statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms;"
            )
        for shard, ((p99, count), (worst, _)) in sorted(shards.items()):
            line += f" shard {shard}: probe p99 {ms(p99)}, max {ms(worst)} ({count} probes);"
        print(line)


if __name__ == "__main__":
    main()
