#!/usr/bin/env bash
# Real-client smoke tests against the real `corelog` binary on a free port and a temp data dir:
# - kcat (Debian's, librdkafka 2.0.2): metadata listing, and a produce/consume round trip with
#   keys through every compression codec;
# - kafka-python (scripts/kafka_python_smoke.py): admin create/list/delete, producer with
#   headers, assigned consumer, end offsets, offsets for times.
# Called by .ci/run after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kcat >/dev/null || { echo "client-smoke: kcat is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
python3 -c 'import kafka' 2>/dev/null || { echo "client-smoke: kafka-python is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
cargo build --locked -q -p corelog-tools --bin corelog
binary=target/debug/corelog
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$binary" start --data-dir "$data" --listen "127.0.0.1:$port" --cores 2 >"$data/broker.log" 2>&1 &
broker=$!
cleanup() { kill -TERM "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 1 100); do grep -q "corelog ready" "$data/broker.log" && break; sleep 0.1; done
grep -q "corelog ready" "$data/broker.log" || { echo "client-smoke: broker did not start"; cat "$data/broker.log"; exit 1; }

broker_address="127.0.0.1:$port"
passed=0
failed=0
check() { # name, expected, actual
  if [ "$2" == "$3" ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $1: expected [$2] got [$3]"; fi
}
for codec in none gzip snappy lz4 zstd; do
  topic="smoke-$codec"
  seq 1 200 | awk -v codec="$codec" '{ print "key" $1 ":value-" codec "-" $1 }' | timeout 60 kcat -b "$broker_address" -P -t "$topic" -z "$codec" -K: 
  got=$(timeout 60 kcat -b "$broker_address" -C -t "$topic" -o beginning -e -q -f '%k=%s@%o\n' | tail -n 1)
  check "$codec round trip" "key200=value-$codec-200@199" "$got"
  count=$(timeout 60 kcat -b "$broker_address" -C -t "$topic" -o beginning -e -q | wc -l)
  check "$codec count" "200" "$count"
done
seq 1 500 | timeout 60 kcat -b "$broker_address" -P -t smoke-idempotent -X enable.idempotence=true
count=$(timeout 60 kcat -b "$broker_address" -C -t smoke-idempotent -o beginning -e -q | wc -l)
check "idempotent producer" "500" "$count"
listed=$(timeout 30 kcat -b "$broker_address" -L | grep -c 'topic "smoke-' || true)
check "metadata lists the topics" "6" "$listed"
echo "kcat: $passed passed, $failed failed"
if timeout 300 python3 scripts/kafka_python_smoke.py "$broker_address"; then python_status=0; else python_status=$?; fi
check "kafka-python smoke" "0" "$python_status"
kill -TERM "$broker"
wait "$broker" && stopped=0 || stopped=$?
check "clean stop" "0" "$stopped"
trap 'rm -rf "$data"' EXIT
echo "client-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
