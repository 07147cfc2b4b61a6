#!/usr/bin/env bash
# Installs the system packages breadcrumb's build needs, if they are missing:
# libclang (bindgen for RocksDB), OpenSSL headers and pkg-config (librdkafka with TLS/SASL), and
# the openssl command (the TLS test makes its own certificate authority).
set -euo pipefail

missing=()
for package in libclang-dev libssl-dev pkg-config openssl; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "Installing system packages: ${missing[*]}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
