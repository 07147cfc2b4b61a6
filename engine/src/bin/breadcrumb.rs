//! `breadcrumb`: run the engine, the embedded demo, a workload generator or the checker.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use breadcrumb_engine::config::{redacted_kafka, EngineConfig, LogFormat};
use breadcrumb_engine::generate::{self, WorkloadSpec};
use breadcrumb_engine::http::{self, Health};
use breadcrumb_engine::metrics::Metrics;
use breadcrumb_engine::{demo, query, runtime, topics, verify};
use clap::{Parser, Subcommand};
use rdkafka::ClientConfig;

#[derive(Parser)]
#[command(
    name = "breadcrumb",
    version,
    about = "Exactly-once event dedupe and lineage over Kafka."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file without connecting to Kafka.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Run the real pipelines on an embedded broker over a payments workload and a stream of
    /// OTLP traces, and summarise.
    Demo {
        /// Records to produce.
        #[arg(long, default_value_t = 50_000)]
        records: u64,
        /// Percentage of producer-retry duplicates.
        #[arg(long, default_value_t = 8.0)]
        duplicate_percent: f64,
        /// Percentage of conflicting reuses of an id.
        #[arg(long, default_value_t = 0.5)]
        conflict_percent: f64,
        /// Percentage of poison records.
        #[arg(long, default_value_t = 0.4)]
        poison_percent: f64,
        /// Percentage of accounts whose payments arrive shuffled.
        #[arg(long, default_value_t = 10.0)]
        shuffled_accounts_percent: f64,
        /// Percentage of payments whose account skips a sequence number before them.
        #[arg(long, default_value_t = 0.05)]
        sequence_gap_percent: f64,
        /// Traces of the telemetry workload (errors, slow ones, health checks, plain ones).
        #[arg(long, default_value_t = 2_000)]
        traces: u64,
        /// Commerce flows (order → payment → invoice, one trace each) of the lineage workload.
        #[arg(long, default_value_t = 300)]
        flows: u64,
    },
    /// Produce a synthetic payments workload (CloudEvents, structured mode) to a broker.
    Generate {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// Records per second; 0 for as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        duplicate_percent: f64,
        #[arg(long, default_value_t = 0.5)]
        conflict_percent: f64,
        #[arg(long, default_value_t = 0.5)]
        poison_percent: f64,
        /// Distinct accounts (Kafka keys).
        #[arg(long, default_value_t = 1_000)]
        keys: u64,
        /// Percentage of accounts whose events arrive shuffled (about half held back behind
        /// the account's next event).
        #[arg(long, default_value_t = 0.0)]
        shuffled_accounts_percent: f64,
        /// Percentage of events whose account skips a sequence number first.
        #[arg(long, default_value_t = 0.0)]
        sequence_gap_percent: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Create the topic with this many partitions if it is missing.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Check that every distinct input id appears exactly once in a pipeline's output.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// The pipeline to check; the only one when omitted.
        #[arg(long)]
        pipeline: Option<String>,
        /// Transaction journals of the engines (for brokers that show aborted records).
        #[arg(long = "journal")]
        journals: Vec<PathBuf>,
        /// How long reading the topics may take, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_seconds: u64,
        /// Check the reconciliation ledger against the topics instead: ranges contiguous and
        /// not overlapping, counts and output digests equal to the records found; prints one
        /// line per range.
        #[arg(long)]
        ledger: bool,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { file } => match EngineConfig::load(&file) {
            Ok(config) => {
                println!(
                    "{}: valid ({} pipeline(s): {})",
                    file.display(),
                    config.pipelines.len(),
                    config
                        .pipelines
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Run { config } => {
            let config = EngineConfig::load(&config)?;
            init_logging(config.logging.format, &config.logging.level);
            run_engine(config)
        }
        Command::Demo {
            records,
            duplicate_percent,
            conflict_percent,
            poison_percent,
            shuffled_accounts_percent,
            sequence_gap_percent,
            traces,
            flows,
        } => {
            init_logging(LogFormat::Text, "warn");
            println!("Starting an embedded Kafka broker and the breadcrumb pipelines...");
            let summary = demo::run(&demo::DemoOptions {
                records,
                duplicate_percent,
                conflict_percent,
                poison_percent,
                shuffled_accounts_percent,
                sequence_gap_percent,
                traces,
                flows,
                progress: std::io::stderr().is_terminal(),
            })?;
            println!("{}", summary.render());
            Ok(
                if summary.conserved()
                    && summary.output_exactly_once
                    && summary.telemetry.ok()
                    && summary.lineage.ok()
                {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        Command::Generate {
            bootstrap,
            topic,
            records,
            rate,
            duplicate_percent,
            conflict_percent,
            poison_percent,
            keys,
            shuffled_accounts_percent,
            sequence_gap_percent,
            seed,
            partitions,
        } => {
            init_logging(LogFormat::Text, "warn");
            let mut client = ClientConfig::new();
            client.set("bootstrap.servers", &bootstrap);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(topics::ensure(
                &client,
                &[topics::TopicSpec {
                    name: topic.clone(),
                    partitions,
                    compacted: false,
                    exact_partitions: false,
                }],
                1,
            ))?;
            let counts = generate::produce(
                &client,
                &topic,
                WorkloadSpec {
                    records,
                    duplicate_percent,
                    conflict_percent,
                    poison_percent,
                    accounts: keys,
                    shuffled_accounts_percent,
                    sequence_gap_percent,
                    seed,
                    ..WorkloadSpec::default()
                },
                rate,
                |_| {},
            )?;
            println!(
                "produced {} records to {topic}: {} new, {} duplicates, {} conflicts, {} poison",
                counts.total(),
                counts.new,
                counts.duplicates,
                counts.conflicts,
                counts.poison
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            config,
            pipeline,
            journals,
            timeout_seconds,
            ledger,
        } => {
            let config = EngineConfig::load(&config)?;
            init_logging(LogFormat::Text, "warn");
            let pipeline = match pipeline {
                Some(name) => name,
                None if config.pipelines.len() == 1 => {
                    config.pipelines.keys().next().cloned().unwrap_or_default()
                }
                None => anyhow::bail!("several pipelines are configured: name one with --pipeline"),
            };
            if ledger {
                let report = verify::verify_ledger(
                    &config,
                    &pipeline,
                    &journals,
                    Duration::from_secs(timeout_seconds),
                )?;
                print!("{}", report.render());
                return Ok(if report.consistent() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                });
            }
            let report = verify::verify(
                &config,
                &pipeline,
                &journals,
                Duration::from_secs(timeout_seconds),
            )?;
            print!("{}", report.render());
            Ok(if report.exactly_once() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

fn run_engine(config: EngineConfig) -> anyhow::Result<ExitCode> {
    let config = Arc::new(config);
    // A panic on the engine thread poisons the processing core's lock; the rebalance callbacks
    // librdkafka runs while the consumer is dropped then panic in turn, and the process hung
    // instead of exiting (found by the crash-quarantine test). Die at once instead: the last
    // commit is the truth, a supervisor restarts the process, and a record that keeps causing
    // this is quarantined.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report_panic(info);
        std::process::abort();
    }));
    tracing::info!(
        application_id = %config.application_id,
        instance_id = %config.instance_id(),
        guarantee = ?config.processing_guarantee,
        kafka = ?redacted_kafka(&config.kafka),
        "Starting breadcrumb."
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    let health = Health::new();
    let shutdown = Arc::new(AtomicBool::new(false));

    runtime
        .block_on(async {
            let specs = runtime::planned_topics(&config)?;
            topics::ensure(
                &runtime::base_client_config(&config),
                &specs,
                config.replication_factor,
            )
            .await?;
            anyhow::Ok(())
        })
        .context("preparing topics")?;

    let mut query_receiver = None;
    if config.http.enabled {
        let address = config
            .http
            .listen_address
            .parse()
            .with_context(|| format!("http.listen_address `{}`", config.http.listen_address))?;
        let metrics = metrics.clone();
        let health = health.clone();
        let (sender, receiver) = query::channel();
        query_receiver = Some(receiver);
        let directory: Arc<dyn query::Directory> = Arc::new(query::KafkaDirectory::new(
            runtime::base_client_config(&config),
            &config.application_id,
        ));
        // Another partitioner places repartitioned keys elsewhere than CRC32 says.
        let crc32_partitioner = config
            .kafka
            .get("partitioner")
            .is_none_or(|partitioner| partitioner == "consistent_random");
        let queries = query::QueryService::new(
            sender,
            &config.instance_id(),
            Some(config.http.advertised_address()),
            Some(directory),
            crc32_partitioner,
        );
        runtime.spawn(async move {
            if let Err(error) = http::serve(address, metrics, health, Some(queries)).await {
                tracing::error!(%error, "Metrics server stopped.");
            }
        });
    }
    {
        let shutdown = shutdown.clone();
        runtime.spawn(async move {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("Shutting down: finishing the open transaction.");
            shutdown.store(true, Ordering::Release);
        });
    }
    let engine = {
        let config = config.clone();
        let metrics = metrics.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("breadcrumb-engine".to_owned())
            .spawn(move || {
                runtime::run_with_queries(config, metrics, health, shutdown, query_receiver)
            })?
    };
    let result = engine
        .join()
        .map_err(|_| anyhow::anyhow!("engine thread panicked"))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    tracing::info!("Stopped cleanly.");
    Ok(ExitCode::SUCCESS)
}
