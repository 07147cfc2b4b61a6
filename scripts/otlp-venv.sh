#!/usr/bin/env bash
# A Python virtual environment with the OpenTelemetry protobuf bindings from PyPI
# (`opentelemetry-proto`), used by the tail-sampling integration test as an independent OTLP
# encoder and decoder. Idempotent; prints the environment's python.
set -euo pipefail
venv="${BREADCRUMB_OTLP_VENV:-$HOME/.cache/breadcrumb/otlp-venv}"
if ! "$venv/bin/python" -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' 2>/dev/null; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        sudo_cmd=""
        if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
        $sudo_cmd apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >&2
    fi
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet 'opentelemetry-proto>=1.20,<2' >&2
fi
echo "$venv/bin/python"
