#!/usr/bin/env bash
# A Python virtual environment with the OpenTelemetry protobuf bindings from PyPI
# (`opentelemetry-proto`), used by the tail-sampling integration test as an independent OTLP
# encoder and decoder. Idempotent; prints the environment's python.
set -euo pipefail
venv="${BREADCRUMB_OTLP_VENV:-$HOME/.cache/breadcrumb/otlp-venv}"
if ! "$venv/bin/python" -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' 2>/dev/null; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet 'opentelemetry-proto>=1.20,<2' >&2
fi
echo "$venv/bin/python"
