#!/usr/bin/env bash
# Validates the deployment under docker/ without a Docker engine:
#   - the compose file, with the real compose tool: `docker compose config` when a Docker CLI with
#     the compose plugin is present, otherwise Debian's `docker-compose` (1.29.2, apt), which
#     checks the file against the compose schema without contacting a daemon;
#   - that every file the compose file mounts or builds from exists, and that Grafana's
#     provisioning points at the mounted dashboards and the Prometheus datasource they use;
#   - the Prometheus configuration, with `promtool check config` (promtool from Debian's
#     `prometheus` package: used from PATH, otherwise extracted from the .deb into a cache
#     directory, so no Prometheus service gets installed or started);
#   - the Grafana dashboard: the JSON parses, panel ids are unique, every panel has the datasource
#     and targets, and every PromQL expression parses (`promtool check rules` on a rules file
#     built from the expressions, Grafana variables replaced by sample values).
# engine/tests/dashboard.rs checks the other direction: every metric the dashboard queries exists.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    $sudo_cmd apt-get update -qq
    apt_updated=1
  fi
}

# --- Tools
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  missing=()
  for package in docker-compose python3-yaml; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing system packages: ${missing[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  compose=(docker-compose)
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  apt_update
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    python3-yaml >/dev/null
fi

promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/breadcrumb"
  promtool="$cache/promtool"
  if [ ! -x "$promtool" ]; then
    echo "Extracting promtool from Debian's prometheus package into $cache"
    if ! (cd "$work" && apt-get download -qq prometheus 2>/dev/null); then
      apt_update
      (cd "$work" && apt-get download -qq prometheus)
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/prometheus"
    mkdir -p "$cache"
    install -m 0755 "$work/prometheus/usr/bin/promtool" "$promtool"
  fi
fi

# --- Compose file
echo "compose: ${compose[*]} config"
"${compose[@]}" -f docker/compose.yaml config -q

# --- Files the compose file refers to, Grafana provisioning, dashboard structure
python3 - "$work/dashboard-rules.yml" <<'PY'
import json
import pathlib
import sys

import yaml

root = pathlib.Path(".")
docker = root / "docker"
errors = []

compose = yaml.safe_load((docker / "compose.yaml").read_text())
mounts = {}  # container path -> host path, over all services
for name, service in compose["services"].items():
    build = service.get("build")
    if build:
        context = (docker / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            errors.append(f"compose: service {name}: no Dockerfile at {dockerfile}")
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            host = (docker / source).resolve()
            if not host.exists():
                errors.append(f"compose: service {name}: mounted path {source} does not exist")
            mounts[target] = host

def host_path(container_path):
    """The host path of a container path, through the compose bind mounts."""
    for target, host in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return host / container_path[len(target):].lstrip("/")
    return None

provisioning = docker / "grafana" / "provisioning"
datasource_uids = set()
for path in sorted((provisioning / "datasources").glob("*.yml")):
    for source in yaml.safe_load(path.read_text()).get("datasources", []):
        datasource_uids.add(source["uid"])
dashboard_files = []
for path in sorted((provisioning / "dashboards").glob("*.yml")):
    for provider in yaml.safe_load(path.read_text()).get("providers", []):
        directory = host_path(provider["options"]["path"])
        if directory is None or not directory.is_dir():
            errors.append(f"{path}: provider path {provider['options']['path']} is not a mounted directory")
        else:
            dashboard_files.extend(sorted(directory.glob("*.json")))
if not dashboard_files:
    errors.append("grafana: no provisioned dashboard")

expressions = []
for path in dashboard_files:
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        errors.append(f"{path}: not JSON: {error}")
        continue
    for key in ("uid", "title", "panels"):
        if key not in dashboard:
            errors.append(f"{path}: no `{key}`")
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    ids = [panel.get("id") for panel in panels]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if None in ids:
        errors.append(f"{path}: a panel has no id")
    if duplicates:
        errors.append(f"{path}: duplicate panel ids {duplicates}")
    for panel in panels:
        if panel.get("type") == "row":
            continue
        where = f"{path}: panel {panel.get('id')} ({panel.get('title')!r})"
        if "gridPos" not in panel:
            errors.append(f"{where}: no gridPos")
        uid = (panel.get("datasource") or {}).get("uid")
        if uid not in datasource_uids:
            errors.append(f"{where}: datasource {uid!r} is not provisioned ({sorted(datasource_uids)})")
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        refs = [target.get("refId") for target in targets]
        if len(set(refs)) != len(refs) or None in refs:
            errors.append(f"{where}: refIds missing or repeated: {refs}")
        for target in targets:
            expr = target.get("expr", "").strip()
            if not expr:
                errors.append(f"{where}: target {target.get('refId')} has no expr")
                continue
            expressions.append((f"{path.stem}_panel_{panel['id']}_{target['refId']}", expr))

# PromQL syntax: a rules file for promtool. Grafana's variables become sample values.
samples = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "30m",
           "${pipeline}": ".*", "$pipeline": ".*"}
rules = []
for record, expr in expressions:
    for variable, value in samples.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        errors.append(f"{record}: unknown Grafana variable in {expr!r}")
    rules.append({"record": f"dashboard:{record}", "expr": expr})
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"grafana: {len(dashboard_files)} dashboard(s), {len(expressions)} PromQL expressions")
pathlib.Path(sys.argv[1]).write_text(
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
PY

# --- Prometheus configuration and the dashboard's PromQL
"$promtool" check config docker/prometheus/prometheus.yml
"$promtool" check rules "$work/dashboard-rules.yml"
echo "docker/: valid"
