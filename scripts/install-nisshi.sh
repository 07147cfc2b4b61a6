#!/usr/bin/env bash
# Installs the Nisshi broker (Kafka-protocol broker, Tansu's successor) used by
# integration-tests/. Idempotent: does nothing if a nisshi 0.7.0 binary is already
# found in PATH or ~/.cargo/bin. A cold install compiles for ~13 minutes.
set -euo pipefail

WANT_VERSION="0.7.0"

find_nisshi() {
    if [[ -n "${NISSHI_BIN:-}" && -x "${NISSHI_BIN}" ]]; then
        echo "${NISSHI_BIN}"
        return 0
    fi
    if command -v nisshi >/dev/null 2>&1; then
        command -v nisshi
        return 0
    fi
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
    if [[ -x "${cargo_bin}" ]]; then
        echo "${cargo_bin}"
        return 0
    fi
    if [[ -x "$HOME/.cargo/bin/nisshi" ]]; then
        echo "$HOME/.cargo/bin/nisshi"
        return 0
    fi
    return 1
}

if bin="$(find_nisshi)"; then
    # `nisshi --version` prints e.g. "nisshi 0.7.0".
    version="$("${bin}" --version 2>/dev/null | awk '{print $NF}' || true)"
    if [[ "${version}" == "${WANT_VERSION}" ]]; then
        echo "nisshi ${WANT_VERSION} already installed at ${bin}; nothing to do."
        exit 0
    fi
    echo "found nisshi at ${bin} reporting version '${version:-unknown}', want ${WANT_VERSION}; reinstalling."
else
    echo "nisshi not found in \$NISSHI_BIN, PATH or ~/.cargo/bin; installing ${WANT_VERSION}."
fi

cmd=(cargo install nisshi --version "${WANT_VERSION}" --locked --ignore-rust-version --features dynostore,libsql)
echo "+ ${cmd[*]}"
"${cmd[@]}"

echo "installed: $("${CARGO_HOME:-$HOME/.cargo}/bin/nisshi" --version)"
