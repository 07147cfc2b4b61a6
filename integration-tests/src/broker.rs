//! A Nisshi broker child process.

use std::collections::BTreeMap;
use std::env;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::base_config;

/// Where the broker keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `memory://nisshi/`: everything is lost when the process stops (also on [`Broker::restart`]).
    Memory,
    /// `sqlite://<path>`: a SQLite database file, kept across [`Broker::restart`]. The parent
    /// directory is created if needed; a relative path is taken relative to the test's current
    /// directory.
    Sqlite(PathBuf),
}

impl Storage {
    fn url(&self) -> Result<String> {
        match self {
            Storage::Memory => Ok("memory://nisshi/".to_owned()),
            Storage::Sqlite(path) => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    env::current_dir()?.join(path)
                };
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                // Nisshi joins the URL path (minus one leading '/') onto its working directory,
                // so an absolute file needs `sqlite:///` + `/abs/path` (four slashes).
                Ok(format!("sqlite:///{}", path.display()))
            }
        }
    }
}

/// How to start a broker. `BrokerOptions::default()` is in-memory storage.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub storage: Storage,
    /// `--group-initial-rebalance-delay` (Kafka's `group.initial.rebalance.delay.ms`). Nisshi's
    /// default is 3 s; the harness defaults to 0 so a lone consumer joins at once. Raise it when a
    /// test wants several members to land in the first generation together.
    pub group_initial_rebalance_delay: Duration,
    /// `--group-poll-interval`: how often a held JoinGroup/SyncGroup re-reads storage. Nisshi's
    /// default is 500 ms; the harness uses 100 ms.
    pub group_poll_interval: Duration,
    /// How long to wait for the broker to answer a metadata request.
    pub startup_timeout: Duration,
    /// Extra arguments appended to `nisshi broker ...`.
    pub extra_args: Vec<OsString>,
    /// librdkafka settings the readiness probe needs to talk to the broker (TLS, SASL).
    pub client_settings: Vec<(String, String)>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            storage: Storage::Memory,
            group_initial_rebalance_delay: Duration::ZERO,
            group_poll_interval: Duration::from_millis(100),
            startup_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
            client_settings: Vec::new(),
        }
    }
}

/// A running Nisshi broker on `127.0.0.1:<port>`. Dropping it kills the process (SIGKILL); if
/// the thread is panicking, the tail of the broker's log is printed to stderr first.
pub struct Broker {
    bin: PathBuf,
    options: BrokerOptions,
    port: u16,
    child: Option<Child>,
    /// Working directory of the process (so Nisshi's `dotenv` finds no stray `.env`) and home of
    /// `broker.log`, which collects stdout and stderr of every start of this broker.
    dir: tempfile::TempDir,
    log_path: PathBuf,
}

const PORT_ATTEMPTS: usize = 5;

impl Broker {
    /// Starts a broker with the given storage and otherwise default options.
    pub fn start(storage: Storage) -> Result<Broker> {
        Self::start_with(BrokerOptions {
            storage,
            ..BrokerOptions::default()
        })
    }

    /// Starts an in-memory broker.
    pub fn start_memory() -> Result<Broker> {
        Self::start(Storage::Memory)
    }

    pub fn start_with(options: BrokerOptions) -> Result<Broker> {
        let bin = nisshi_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("nisshi-broker-")
            .tempdir()
            .context("creating the broker's temp dir")?;
        let log_path = dir.path().join("broker.log");
        let mut broker = Broker {
            bin,
            options,
            port: 0,
            child: None,
            dir,
            log_path,
        };

        let mut last_err = None;
        for attempt in 1..=PORT_ATTEMPTS {
            broker.port = free_port()?;
            match broker.spawn_and_wait() {
                Ok(()) => return Ok(broker),
                Err(StartError::AddrInUse(e)) => {
                    broker.note(&format!(
                        "port {} was taken (attempt {attempt}/{PORT_ATTEMPTS}), picking another",
                        broker.port
                    ));
                    last_err = Some(e);
                }
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("could not start nisshi")))
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn storage(&self) -> &Storage {
        &self.options.storage
    }

    /// The metadata committed with the group's offsets of `topic` (partition -> metadata), read
    /// from the broker's SQLite database: Nisshi 0.7.0 stores offset metadata, also from
    /// `TxnOffsetCommit`, but answers every `OffsetFetch` with an empty one.
    pub fn stored_offset_metadata(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, String>> {
        let Storage::Sqlite(path) = &self.options.storage else {
            bail!("offset metadata can only be read from a broker on SQLite storage");
        };
        let database =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("opening {}", path.display()))?;
        database.busy_timeout(Duration::from_secs(10))?;
        let mut query = database.prepare(
            "select tp.partition, co.metadata
             from consumer_offset co
             join consumer_group cg on cg.id = co.consumer_group
             join topition tp on tp.id = co.topition
             join topic t on t.id = tp.topic
             where cg.name = ?1 and t.name = ?2",
        )?;
        let rows = query.query_map([group, topic], |row| {
            Ok((row.get::<_, i32>(0)?, row.get::<_, Option<String>>(1)?))
        })?;
        let mut metadata = BTreeMap::new();
        for row in rows {
            let (partition, text) = row?;
            metadata.insert(partition, text.unwrap_or_default());
        }
        Ok(metadata)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Path of the log file that collects the broker's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the broker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it has not exited within 10 s.
    /// Stopping a stopped broker is a no-op.
    ///
    /// Nisshi exits at once when no client is connected, but waits ~5 s for open connections
    /// (e.g. a live producer or consumer) before it gives up on them, so `stop()` takes ~5 s
    /// while clients are connected. Use [`Broker::kill`] to simulate a crash.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let status = terminate(&mut child, Duration::from_secs(10))?;
        self.note(&format!("stopped ({status}) in {:?}", started.elapsed()));
        Ok(())
    }

    /// Kills the broker with SIGKILL (a crash: no graceful shutdown). [`Broker::restart`] starts
    /// it again. Killing a stopped broker is a no-op.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill().context("SIGKILL nisshi")?;
        let status = child.wait()?;
        self.note(&format!("killed ({status})"));
        Ok(())
    }

    /// Stops the broker (SIGTERM, see [`Broker::stop`]) if it is running and starts it again on
    /// the same port with the same storage.
    /// With [`Storage::Sqlite`] the topics, records and committed offsets survive; with
    /// [`Storage::Memory`] they do not.
    /// The options the next [`Broker::restart`] uses (e.g. to turn TLS and authentication on
    /// once users exist).
    pub fn options_mut(&mut self) -> &mut BrokerOptions {
        &mut self.options
    }

    /// Creates a SCRAM user (`nisshi user create`); the broker must not require TLS or
    /// authentication yet (the `user` client speaks neither).
    pub fn create_user(&self, name: &str, password: &str, mechanism: &str) -> Result<()> {
        let output = Command::new(&self.bin)
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--mechanism", mechanism, name, password])
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .output()
            .context("running nisshi user create")?;
        if !output.status.success() {
            bail!(
                "nisshi user create failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.note("restarting");
        // The port was ours a moment ago; if something else grabbed it (or the kernel still holds
        // it), retry for a while rather than move: clients keep the old bootstrap address.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(StartError::AddrInUse(e)) if Instant::now() < deadline => {
                    self.note(&format!(
                        "port {} still in use ({e:#}), retrying",
                        self.port
                    ));
                    thread::sleep(Duration::from_millis(500));
                }
                Err(StartError::AddrInUse(e)) | Err(StartError::Other(e)) => return Err(e),
            }
        }
    }

    fn note(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
        {
            let _ = writeln!(f, "=== harness: {line}");
        }
    }

    fn command_line(&self) -> Result<Vec<OsString>> {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let mut args: Vec<OsString> = vec![
            "broker".into(),
            "--listener-url".into(),
            listener.clone().into(),
            "--advertised-listener-url".into(),
            listener.into(),
            "--storage-engine".into(),
            self.options.storage.url()?.into(),
            "--group-initial-rebalance-delay".into(),
            format!(
                "{}ms",
                self.options.group_initial_rebalance_delay.as_millis()
            )
            .into(),
            "--group-poll-interval".into(),
            format!("{}ms", self.options.group_poll_interval.as_millis().max(1)).into(),
        ];
        args.extend(self.options.extra_args.iter().cloned());
        Ok(args)
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let args = self.command_line()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("opening the broker log")?;
        let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        self.note(&format!(
            "starting {} {}",
            self.bin.display(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log)
            // Keep the test environment's settings for *our* code away from the broker.
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                env::var("NISSHI_LOG").unwrap_or_else(|_| "warn".to_owned()),
            );
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);

        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(e) => {
                // Make sure nothing is left behind, then classify.
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let this_run = read_from(&self.log_path, start_offset);
                let lower = this_run.to_lowercase();
                let err = anyhow!(
                    "{e:#}\n--- nisshi log tail ({}) ---\n{}",
                    self.log_path.display(),
                    last_lines(&this_run, 40)
                );
                if lower.contains("address already in use") || lower.contains("addrinuse") {
                    Err(StartError::AddrInUse(err))
                } else {
                    Err(StartError::Other(err))
                }
            }
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.options.startup_timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));

        // 1. The port accepts TCP connections (cheap, fast polling).
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "nisshi did not listen on {addr} within {:?}",
                    self.options.startup_timeout
                );
            }
            thread::sleep(Duration::from_millis(50));
        }

        // 2. It answers a Kafka metadata request.
        let mut probe = base_config(&self.bootstrap());
        for (key, value) in &self.options.client_settings {
            probe.set(key, value);
        }
        let consumer: BaseConsumer = probe
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "250")
            .create()
            .context("creating the readiness-probe client")?;
        loop {
            self.check_alive()?;
            let last_err = match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => {
                    self.note(&format!("ready after {:?}", started.elapsed()));
                    return Ok(());
                }
                Ok(_) => "metadata without brokers".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "nisshi on {addr} did not answer a metadata request within {:?} (last error: {last_err})",
                    self.options.startup_timeout
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("no broker process"))?;
        if let Some(status) = child.try_wait()? {
            bail!("nisshi exited during startup: {status}");
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if thread::panicking() {
                eprintln!(
                    "--- nisshi on port {} log tail ({}) ---\n{}",
                    self.port,
                    self.log_path.display(),
                    self.log_tail(60)
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bootstrap", &self.bootstrap())
            .field("storage", &self.options.storage)
            .field("pid", &self.child.as_ref().map(|c| c.id()))
            .field("log", &self.log_path)
            .finish()
    }
}

enum StartError {
    AddrInUse(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// Finds the `nisshi` binary: `$NISSHI_BIN`, then `PATH`, then `$CARGO_HOME/bin` / `~/.cargo/bin`.
pub fn nisshi_binary() -> Result<PathBuf> {
    if let Some(bin) = env::var_os("NISSHI_BIN") {
        let bin = PathBuf::from(bin);
        if is_executable(&bin) {
            return Ok(bin);
        }
        bail!(
            "NISSHI_BIN={} is not an executable file; unset it or run scripts/install-nisshi.sh",
            bin.display()
        );
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let candidate = dir.join("nisshi");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    let mut candidates = Vec::new();
    if let Some(cargo_home) = env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(cargo_home).join("bin/nisshi"));
    }
    if let Some(home) = env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/nisshi"));
    }
    for candidate in &candidates {
        if is_executable(candidate) {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "the nisshi broker binary was not found (looked at $NISSHI_BIN, PATH, {}); \
         run scripts/install-nisshi.sh (installs nisshi 0.7.0 with cargo install)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A port that was free a moment ago (bind to :0, read it, release it).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
fn terminate(child: &mut Child, grace: Duration) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // SAFETY: plain kill(2) on the pid of a child we have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.kill().context("SIGKILL nisshi")?;
    Ok(child.wait()?)
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
    }
    s
}

fn tail(path: &Path, lines: usize) -> String {
    last_lines(&read_from(path, 0), lines)
}

fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
