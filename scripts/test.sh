#!/usr/bin/env bash
# The test suite: unit and property tests, then integration tests against a real Kafka-protocol
# broker (Nisshi, installed on first use into ~/.cargo/bin), then a compile check of the benches.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh
scripts/install-nisshi.sh
# Python's opentelemetry-proto (PyPI) in a venv: the independent OTLP encoder of the sampling test.
scripts/otlp-venv.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --lib --bins --tests --no-fail-fast
fi
# Benchmarks are measured, not asserted (`cargo bench`): here they only have to build, in the
# test profile so RocksDB's C++ is not compiled a second time for the release profile.
cargo build --workspace --benches
# The deployment under docker/: compose file, Prometheus config, dashboard (no Docker engine needed).
scripts/validate-docker.sh
