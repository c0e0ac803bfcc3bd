#!/usr/bin/env bash
# Installs the system packages corelog's build and tests need (Debian/Ubuntu, as root or
# with sudo). Safe to run again: it installs only what is missing.
#   cmake, libcurl4-openssl-dev  build librdkafka for the `rdkafka` real-client tests
#   git, pkg-config, build-essential
#   kcat                         real-client smoke test (scripts/client-smoke.sh)
#   e2fsprogs, mount             mkfs.ext4 and loop mounts for the full-disk test (tools/tests/disk_full.rs)
#   kafka-python (PyPI)          real-client smoke test (scripts/kafka_python_smoke.py)
set -euo pipefail

packages=(cmake libcurl4-openssl-dev git pkg-config build-essential kcat e2fsprogs mount)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
else
  echo "setup: system packages already installed"
fi

# Python client for the real-client smoke test (PyPI).
python3 -c 'import kafka' 2>/dev/null || python3 -m pip install --quiet --root-user-action=ignore 'kafka-python==3.0.12'

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
echo "setup: done"
