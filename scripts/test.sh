#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration, end-to-end (the real `corelog`
# binary), property tests, and every benchmark in its tiny mode. This is the README's test
# command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --locked "$@"
