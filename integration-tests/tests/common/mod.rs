//! Running the `breadcrumb` binary against a test broker: configuration files, processes,
//! waiting for progress, and the `verify` command.

#![allow(dead_code)]

pub mod invariants;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use breadcrumb_integration_tests::{committed_offsets, watermarks};

/// The `breadcrumb` binary of this workspace build. Built once per test process: a test target
/// of this package does not depend on another package's binaries, so it could otherwise be stale.
pub fn breadcrumb_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().map_err(|error| error.to_string())?;
            // target/<profile>/deps/<test> -> target/<profile>/breadcrumb
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or("test executable has no profile directory")?;
            let status = Command::new(env!("CARGO"))
                .args(["build", "--workspace", "--bins"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .map_err(|error| error.to_string())?;
            let binary = profile_dir.join("breadcrumb");
            if !status.success() || !binary.exists() {
                return Err(format!("could not build {}", binary.display()));
            }
            Ok(binary)
        })
        .clone()
        .map_err(|error| anyhow::anyhow!(error))
}

/// One pipeline's worth of topic names and settings for a test.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub bootstrap: String,
    pub application_id: String,
    pub input_topic: String,
    pub output_topic: String,
    pub duplicates_topic: String,
    pub dead_letter_topic: String,
    pub commit_interval_ms: u64,
    pub repartition_by: Option<&'static str>,
    /// More keys of the pipeline's own table (`span_topics = [...]`), before its sub-tables.
    pub pipeline_keys: String,
    /// The body of `[pipelines.payments.decoder]` (its keys, then any sub-tables).
    pub decoder_toml: String,
    /// Serve `/metrics` on this loopback port; `None`: no HTTP endpoint.
    pub http_port: Option<u16>,
    /// TOML added after the `[kafka]` table's keys: more librdkafka keys, then possibly other
    /// top-level tables (`[kafka_secret_files]`).
    pub kafka_toml: String,
    /// TOML appended to the pipeline's configuration (e.g. an `[pipelines.payments.ordering]`
    /// table).
    pub extra_toml: String,
    /// Consumer session timeout: short, so a killed instance's partitions move on quickly.
    pub session_timeout_ms: Option<u64>,
    /// Static group membership (`group.instance.id` = the instance id): a restarted instance
    /// takes its predecessor's place without a rebalance.
    pub static_membership: bool,
}

impl Scenario {
    pub fn new(bootstrap: &str, name: &str) -> Self {
        let application_id = breadcrumb_integration_tests::unique_name(name);
        Self {
            bootstrap: bootstrap.to_owned(),
            input_topic: format!("{application_id}-payments"),
            output_topic: format!("{application_id}-deduped"),
            duplicates_topic: format!("{application_id}-duplicates"),
            dead_letter_topic: format!("{application_id}-dlq"),
            application_id,
            commit_interval_ms: 100,
            repartition_by: None,
            pipeline_keys: String::new(),
            decoder_toml: "format = \"cloudevents\"".to_owned(),
            kafka_toml: String::new(),
            http_port: None,
            extra_toml: String::new(),
            session_timeout_ms: None,
            static_membership: false,
        }
    }

    /// Writes the configuration of instance `instance` under `dir` and returns its path.
    pub fn write_config(&self, dir: &Path, instance: &str) -> Result<PathBuf> {
        let state_dir = dir.join(format!("state-{instance}"));
        let journal = dir.join(format!("journal-{instance}"));
        let repartition = self
            .repartition_by
            .map(|key| format!("repartition_by = \"{key}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
application_id = "{app}"
instance_id = "{instance}"
commit_interval_ms = {commit}
replication_factor = 1
dead_letter_topic = "{dlq}"
transaction_journal_path = "{journal}"
transaction_timeout_ms = 10000

[kafka]
"bootstrap.servers" = "{bootstrap}"
"broker.address.family" = "v4"
{session}
{membership}
{kafka_extra}

[state]
dir = "{state}"

[http]
{http}

[logging]
level = "info,librdkafka=warn,rdkafka=warn"

[pipelines.payments]
input_topics = ["{input}"]
output_topic = "{output}"
duplicates_topic = "{duplicates}"
{repartition}
{pipeline_keys}
[pipelines.payments.decoder]
{decoder}
{extra}
"#,
            decoder = self.decoder_toml,
            pipeline_keys = self.pipeline_keys,
            kafka_extra = self.kafka_toml,
            http = match self.http_port {
                Some(port) => format!("enabled = true\nlisten_address = \"127.0.0.1:{port}\""),
                None => "enabled = false".to_owned(),
            },
            extra = self.extra_toml,
            membership = if self.static_membership {
                format!("\"group.instance.id\" = \"{instance}\"")
            } else {
                String::new()
            },
            session = self
                .session_timeout_ms
                .map(|ms| {
                    format!(
                        "\"session.timeout.ms\" = \"{ms}\"\n\"heartbeat.interval.ms\" = \"{}\"",
                        (ms / 6).max(100)
                    )
                })
                .unwrap_or_default(),
            app = self.application_id,
            commit = self.commit_interval_ms,
            dlq = self.dead_letter_topic,
            journal = journal.display(),
            bootstrap = self.bootstrap,
            state = state_dir.display(),
            input = self.input_topic,
            output = self.output_topic,
            duplicates = self.duplicates_topic,
        );
        let path = dir.join(format!("breadcrumb-{instance}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    pub fn journal(&self, dir: &Path, instance: &str) -> PathBuf {
        dir.join(format!("journal-{instance}"))
    }

    pub fn state_dir(&self, dir: &Path, instance: &str) -> PathBuf {
        dir.join(format!("state-{instance}"))
    }

    /// Waits until the group has committed every input record (offsets at the high watermarks).
    pub fn wait_until_consumed(&self, timeout: Duration) -> Result<()> {
        self.wait_until_topics_consumed(&[&self.input_topic], timeout)
    }

    /// Waits until the group has committed every record of `topics`, one after the other (a
    /// repartition topic after the inputs that feed it).
    pub fn wait_until_topics_consumed(&self, topics: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for topic in topics {
            loop {
                let ends = watermarks(&self.bootstrap, topic)?;
                let committed = committed_offsets(&self.bootstrap, &self.application_id, topic)
                    .unwrap_or_default();
                let done = ends.iter().all(|(partition, (_, high))| {
                    *high == 0
                        || committed
                            .get(partition)
                            .is_some_and(|offset| offset >= high)
                });
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{topic} not consumed within {timeout:?}: ends {ends:?}, committed {committed:?}"
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ok(())
    }

    /// Waits until the group's committed offsets on `topic` stop moving at the topic's end. A
    /// transactional topic (a repartition topic) ends with commit markers, so "at the end"
    /// allows the marker's offset.
    pub fn wait_until_drained(&self, topic: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut stable_since: Option<(Instant, Vec<(i32, i64)>)> = None;
        loop {
            let ends = watermarks(&self.bootstrap, topic)?;
            let committed =
                committed_offsets(&self.bootstrap, &self.application_id, topic).unwrap_or_default();
            let at_end = ends.iter().all(|(partition, (_, high))| {
                *high == 0
                    || committed
                        .get(partition)
                        .is_some_and(|offset| *offset >= high - 1)
            });
            let snapshot: Vec<(i32, i64)> = committed.into_iter().collect();
            match &stable_since {
                Some((since, seen)) if at_end && *seen == snapshot => {
                    if since.elapsed() > Duration::from_millis(1_500) {
                        return Ok(());
                    }
                }
                _ => stable_since = Some((Instant::now(), snapshot)),
            }
            if Instant::now() > deadline {
                bail!("{topic} not drained within {timeout:?}: ends {ends:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Committed input offsets of the group.
    pub fn committed(&self) -> Result<BTreeMap<i32, i64>> {
        committed_offsets(&self.bootstrap, &self.application_id, &self.input_topic)
    }
}

/// A running `breadcrumb run` process, its output going to a log file.
pub struct EngineProcess {
    child: Child,
    pub log: PathBuf,
}

impl EngineProcess {
    pub fn start(config: &Path, log: &Path) -> Result<Self> {
        Self::start_with_env(config, log, &[])
    }

    /// Starts the engine with extra environment variables (test fault hooks).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, String)]) -> Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(breadcrumb_binary()?)
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .context("starting breadcrumb")?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    /// SIGTERM and wait: the engine finishes its transaction and leaves the group.
    pub fn stop(mut self) -> Result<ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!(
                    "engine did not stop within 60 s after SIGTERM:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no chance to commit, abort or flush anything.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGSTOP / SIGCONT: a paused process keeps its sockets but does nothing.
    pub fn pause(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `breadcrumb verify` with the given journals; returns (exit success, stdout).
pub fn verify(config: &Path, journals: &[PathBuf]) -> Result<(bool, String)> {
    run_verify(config, journals, &[])
}

/// Runs `breadcrumb verify --ledger`: the reconciliation ledger against the topics.
pub fn verify_ledger(config: &Path, journals: &[PathBuf]) -> Result<(bool, String)> {
    run_verify(config, journals, &["--ledger"])
}

/// Fails unless the ledger reconciles; returns the report.
pub fn assert_ledger_consistent(config: &Path, journals: &[PathBuf]) -> Result<String> {
    let (consistent, report) = verify_ledger(config, journals)?;
    let tail: Vec<&str> = report.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    anyhow::ensure!(
        consistent && report.contains("ledger consistent: yes"),
        "ledger check failed:\n{}",
        report
            .lines()
            .filter(|line| line.starts_with("violation"))
            .take(40)
            .chain(tail)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(report)
}

fn run_verify(config: &Path, journals: &[PathBuf], extra: &[&str]) -> Result<(bool, String)> {
    let mut command = Command::new(breadcrumb_binary()?);
    command.args(["verify", "--config"]).arg(config).args(extra);
    for journal in journals {
        command.arg("--journal").arg(journal);
    }
    let output = command.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok((output.status.success(), format!("{stdout}{stderr}")))
}

/// Committed transaction ids of the journals.
pub fn committed_transactions(journals: &[PathBuf]) -> Result<std::collections::BTreeSet<String>> {
    let mut committed = std::collections::BTreeSet::new();
    for journal in journals {
        let (outcomes, _) = breadcrumb_engine::journal::read(journal)?;
        committed.extend(
            outcomes
                .into_iter()
                .filter(|(_, ok)| *ok)
                .map(|(txn, _)| txn),
        );
    }
    Ok(committed)
}

/// Whether `record` was written by a committed transaction: its last `breadcrumb-txn` (a
/// record that crossed a repartition topic carries the first stage's too).
pub fn is_committed(
    record: &breadcrumb_integration_tests::ConsumedRecord,
    committed: &std::collections::BTreeSet<String>,
) -> bool {
    record
        .last_header(breadcrumb_engine::headers::TRANSACTION)
        .is_some_and(|txn| committed.contains(&txn))
}

/// A free loopback port (for an engine's `/metrics`).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET /metrics` from an engine's HTTP endpoint on `port`.
pub fn scrape_metrics(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    anyhow::ensure!(
        text.contains("breadcrumb_events_in_total"),
        "not a metrics page: {text}"
    );
    Ok(text)
}
