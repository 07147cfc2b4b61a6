//! The deployment under `docker/` agrees with the engine: every metric the Grafana dashboard
//! queries is one the engine registers, the dashboard's panel ids are unique, and the compose
//! configuration file is valid and serves the port Prometheus scrapes.
//!
//! `scripts/validate-docker.sh` checks the rest without Rust: the compose file against the
//! compose schema, the Prometheus configuration, and that every PromQL expression parses.

use std::collections::BTreeSet;
use std::path::PathBuf;

use breadcrumb_engine::config::EngineConfig;
use breadcrumb_engine::metrics::Metrics;
use prometheus::IntCounter;
use serde_json::Value;

/// Series a histogram exports besides its family name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn repository_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn dashboard() -> Value {
    let path = repository_file("docker/grafana/dashboards/breadcrumb.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("`panels` is an array")
    {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// The PromQL of the dashboard: target expressions (`expr`) and variable queries (`query`,
/// `definition`), wherever they sit.
fn queries<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", Value::String(text)) => out.push(text),
                    _ => queries(value, out),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|value| queries(value, out)),
        _ => {}
    }
}

/// `breadcrumb_*` metric names in a PromQL expression, histogram series folded into their family.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = expr;
    while let Some(start) = rest.find("breadcrumb_") {
        let preceded_by_name = rest[..start].chars().next_back().is_some_and(is_name_char);
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_name_char(c)).unwrap_or(tail.len());
        if !preceded_by_name {
            let name = &tail[..end];
            let family = HISTOGRAM_SUFFIXES
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            out.insert(family.to_owned());
        }
        rest = &tail[end..];
    }
}

fn dashboard_metrics() -> BTreeSet<String> {
    let dashboard = dashboard();
    let mut texts = Vec::new();
    queries(&dashboard, &mut texts);
    let mut names = BTreeSet::new();
    for text in texts {
        metric_names(text, &mut names);
    }
    names
}

/// Whether the engine's `Metrics` registers a family called `name`. Labelled families only
/// appear in `registry.gather()` once a label set has been used, so this asks the registry's
/// descriptors instead: registering a probe under a name that is taken fails (same descriptor,
/// or same name with other labels or help), and succeeds otherwise.
fn is_registered(name: &str) -> bool {
    let metrics = Metrics::new();
    let probe = IntCounter::new(name, "dashboard test probe").expect("valid metric name");
    metrics.registry.register(Box::new(probe)).is_err()
}

#[test]
fn registration_probe_tells_registered_names_from_others() {
    let gathered: Vec<String> = Metrics::new()
        .registry
        .gather()
        .iter()
        .map(|family| family.name().to_owned())
        .collect();
    assert!(
        !gathered.is_empty(),
        "the engine registers unlabelled metrics"
    );
    for name in &gathered {
        assert!(
            is_registered(name),
            "{name} is gathered but the probe misses it"
        );
    }
    // Labelled and never touched, so absent from `gather()`: only the probe sees it.
    assert!(is_registered("breadcrumb_events_in_total"));
    assert!(!is_registered("breadcrumb_no_such_metric_total"));
}

#[test]
fn metric_names_are_read_from_promql() {
    let mut names = BTreeSet::new();
    metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(breadcrumb_commit_duration_seconds_bucket{pipeline=~"$pipeline"}[$__rate_interval]))) / up_breadcrumb_x + breadcrumb_events_in_total"#,
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "breadcrumb_commit_duration_seconds",
            "breadcrumb_events_in_total"
        ]
    );
}

#[test]
fn dashboard_queries_only_metrics_the_engine_registers() {
    let names = dashboard_metrics();
    assert!(
        names.contains("breadcrumb_events_in_total"),
        "no breadcrumb metric found in the dashboard: {names:?}"
    );
    let missing: Vec<&String> = names.iter().filter(|name| !is_registered(name)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the engine does not register: {missing:?}"
    );
}

#[test]
fn dashboard_panel_ids_are_unique() {
    let dashboard = dashboard();
    let mut seen = BTreeSet::new();
    for panel in panels(&dashboard) {
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {:?} has no numeric id", panel["title"]));
        assert!(seen.insert(id), "panel id {id} is used twice");
    }
}

#[test]
fn compose_configuration_is_valid_and_serves_the_scraped_port() {
    let path = repository_file("docker/breadcrumb.toml");
    let text = std::fs::read_to_string(&path).expect("docker/breadcrumb.toml is readable");
    let config = EngineConfig::from_toml(&text)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert!(config.http.enabled);
    // Prometheus scrapes `breadcrumb:9464` over the compose network: not loopback.
    assert_eq!(config.http.listen_address, "0.0.0.0:9464");
    let prometheus = std::fs::read_to_string(repository_file("docker/prometheus/prometheus.yml"))
        .expect("docker/prometheus/prometheus.yml is readable");
    assert!(
        prometheus.contains("\"breadcrumb:9464\""),
        "prometheus.yml does not scrape breadcrumb:9464"
    );
}
