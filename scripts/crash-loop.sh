#!/usr/bin/env bash
# The long form of the crash loop (tools/tests/crash_loop.rs): the real broker under an acks=all
# idempotent load, killed with SIGKILL at random moments, restarted and checked, N times.
#   scripts/crash-loop.sh --cycles 200 [--seed 12345]
# Prints every cycle and a last line with cycles, records acknowledged, lost (0) and duplicated (0).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=50
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cycles) cycles="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "usage: $0 [--cycles N] [--seed S]" >&2; exit 2 ;;
  esac
done
export CORELOG_CRASH_CYCLES="$cycles"
if [ -n "$seed" ]; then export CORELOG_CRASH_SEED="$seed"; fi
exec cargo test --locked -p corelog-tools --test crash_loop -- --nocapture
