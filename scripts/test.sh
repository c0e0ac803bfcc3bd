#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration, end-to-end (the real `corelog`
# binary), property tests, and every benchmark in its tiny mode. This is the README's test
# command and what .ci/run calls.
#
# A hung test must fail the run, not stall it: the whole suite (about 6 minutes here, build
# included) gets CORELOG_TEST_TIMEOUT seconds (default 2400).
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${CORELOG_TEST_TIMEOUT:-2400}"
status=0
timeout --kill-after=30 "$limit" cargo test --workspace --all-targets --locked "$@" || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "scripts/test.sh: the test suite did not finish within ${limit} s: a test hung" \
        "(cargo test names it: 'has been running for over 60 seconds')" >&2
fi
exit "$status"
