#!/usr/bin/env bash
# The embedded demo: an in-process Kafka-protocol broker, a payments workload, the real pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh
exec cargo run --release -p breadcrumb-engine --bin breadcrumb -- demo "$@"
