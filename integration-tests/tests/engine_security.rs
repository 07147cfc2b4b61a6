//! The engine against a broker that requires TLS and SASL/SCRAM-SHA-512 (Nisshi with `--cert`,
//! `--key` and `--authentication`), configured through the `[kafka]` passthrough with the
//! password in a file (`[kafka_secret_files]`). The password must appear in no log line; a
//! wrong password fails without echoing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use breadcrumb_engine::generate::{self, WorkloadSpec};
use breadcrumb_integration_tests::{
    base_config, create_topics, register_client_settings, Broker, Storage,
};
use common::{verify, EngineProcess, Scenario};
use rdkafka::consumer::{BaseConsumer, Consumer};

const USER: &str = "breadcrumb";
const PASSWORD: &str = "canary-scram-7d1f9e";
const WRONG_PASSWORD: &str = "canary-wrong-0b3c";

/// A CA and a server certificate for `localhost`/127.0.0.1, made with the openssl command.
fn make_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| -> Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (Debian package `openssl`)")?;
        if !output.status.success() {
            bail!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=breadcrumb-test-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ])?;
    Ok((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

fn security_settings(ca: &Path, password: &str) -> Vec<(String, String)> {
    [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", USER),
        ("sasl.password", password),
        ("ssl.ca.location", ca.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

#[test]
fn engine_speaks_tls_and_scram_and_never_shows_the_password() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let (ca, cert, key) = make_certificates(dir.path())?;
    let mut broker = Broker::start(Storage::Sqlite(dir.path().join("broker.db")))?;
    // The `nisshi user` client speaks plain TCP only: users first, then TLS and authentication.
    broker.create_user(USER, PASSWORD, "scram512")?;
    let settings = security_settings(&ca, PASSWORD);
    {
        let options = broker.options_mut();
        options.extra_args = vec![
            "--cert".into(),
            cert.into_os_string(),
            "--key".into(),
            key.into_os_string(),
            "--authentication".into(),
        ];
        options.client_settings = settings.clone();
    }
    broker.restart()?;
    let bootstrap = broker.bootstrap();

    // A plaintext client gets nowhere now.
    let plain: BaseConsumer = base_config(&bootstrap).create()?;
    ensure!(
        plain
            .fetch_metadata(None, Duration::from_secs(3))
            .map(|metadata| metadata.brokers().is_empty())
            .unwrap_or(true),
        "the broker still answers plaintext clients"
    );
    register_client_settings(&bootstrap, &settings);

    let mut scenario = Scenario::new(&bootstrap, "secure");
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    scenario.kafka_toml = format!(
        r#""security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "{USER}"
"ssl.ca.location" = "{ca}"

[kafka_secret_files]
"sasl.password" = "{password}""#,
        ca = ca.display(),
        password = password_file.display()
    );
    create_topics(&bootstrap, &[(&scenario.input_topic, 2)], false)?;
    let produced = generate::produce(
        &base_config(&bootstrap),
        &scenario.input_topic,
        WorkloadSpec {
            records: 400,
            duplicate_percent: 10.0,
            accounts: 20,
            seed: 7,
            ..WorkloadSpec::default()
        },
        0,
        |_| {},
    )?;

    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let log = dir.path().join("a.log");
    let engine = EngineProcess::start(&config, &log)?;
    let consumed = scenario.wait_until_consumed(Duration::from_secs(120));
    let tail = engine.log_tail(60);
    consumed.with_context(|| tail.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");
    let (exactly_once, report) = verify(&config, std::slice::from_ref(&journal))?;
    ensure!(exactly_once, "verify failed:\n{report}");
    ensure!(
        report.contains(&format!("{}", produced.new)),
        "verify saw every first copy:\n{report}"
    );
    let text = std::fs::read_to_string(&log)?;
    ensure!(!text.contains(PASSWORD), "the password reached the log");
    ensure!(
        !report.contains(PASSWORD),
        "the password reached verify's output"
    );

    // A wrong password: the engine cannot connect and stops with an error that shows neither
    // password. (Nisshi closes the connection on a bad SCRAM proof, so librdkafka reports a
    // transport failure rather than an authentication error.)
    let committed_before = scenario.committed()?;
    std::fs::write(&password_file, WRONG_PASSWORD)?;
    let wrong = scenario.write_config(dir.path(), "b")?;
    let wrong_log = dir.path().join("b.log");
    let mut engine = EngineProcess::start(&wrong, &wrong_log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let exited = !engine.is_running();
    drop(engine);
    let text = std::fs::read_to_string(&wrong_log).unwrap_or_default();
    ensure!(
        exited,
        "the engine kept running with a wrong password:\n{text}"
    );
    ensure!(text.contains("error"), "the failure is reported:\n{text}");
    ensure!(
        !text.contains(WRONG_PASSWORD) && !text.contains(PASSWORD),
        "a password reached the log:\n{text}"
    );
    ensure!(
        scenario.committed()? == committed_before,
        "nothing more was committed"
    );
    Ok(())
}
