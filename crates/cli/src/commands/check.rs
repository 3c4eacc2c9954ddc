//! `sitemon check`: run the checker until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sitemon_checker::{CheckerConfig, Compression};

use crate::args::{ServiceArgs, Usage};

/// Arguments of `sitemon check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    options: CheckOptions,
    #[command(flatten)]
    services: ServiceArgs,
}

/// The checker's own settings, shared by `sitemon check` and `sitemon run`.
#[derive(Debug, Args)]
pub(crate) struct CheckOptions {
    /// Written into every event, so that checkers in several regions can each check every
    /// site and their results stay apart. Checkers with the same location (and topic) divide
    /// the sites among themselves; each location checks every site.
    #[arg(long, env = "SITEMON_LOCATION", default_value = "default")]
    location: String,
    /// The most checks in flight at once (each holds a socket).
    #[arg(long, env = "SITEMON_CONCURRENCY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// Limit for a whole check, redirects included: 2s, 500ms, or seconds (fractions allowed).
    /// Default: the smaller of 10 s and the site's interval. A site's own `timeout_ms`
    /// (`add-site --timeout-ms`) takes its place for that site.
    #[arg(long, env = "SITEMON_TIMEOUT", value_parser = crate::args::period)]
    timeout: Option<Duration>,
    /// How much of a body is read and searched by the site's regex.
    #[arg(long, env = "SITEMON_MAX_BODY_BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1..=64 << 20))]
    max_body_bytes: u64,
    /// Compression of produced batches: none, gzip, lz4, snappy or zstd. zstd shrinks the
    /// events to about a fifth on the broker's disk and on the wire, for checker CPU too
    /// small to measure.
    #[arg(long, env = "SITEMON_COMPRESSION", default_value = "zstd",
          value_parser = ["none", "gzip", "lz4", "snappy", "zstd"])]
    compression: String,
    /// How many events may wait while Kafka is unreachable; beyond that the oldest are
    /// dropped (and counted in the log).
    #[arg(long, env = "SITEMON_BUFFER_EVENTS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    buffer_events: u64,
    /// Partitions of the topic if the checker has to create it.
    #[arg(long, env = "SITEMON_PARTITIONS", default_value_t = sitemon_core::kafka::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: i32,
    /// Replicas of each partition if the checker has to create the topic (a single local
    /// broker: 1; Aiven: 2 or more).
    #[arg(long, env = "SITEMON_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i16).range(1..=32))]
    replication_factor: i16,
    /// How long, in milliseconds, an event waits for others to share its produce request:
    /// adds up to that much latency, and divides the broker's requests (hence its CPU) by the
    /// events sent together.
    #[arg(long, env = "SITEMON_LINGER_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    linger_ms: u64,
    /// Time between two progress lines in the log: 5s, 1m, or seconds.
    #[arg(long, env = "SITEMON_PROGRESS_INTERVAL", default_value = "5s", value_parser = crate::args::period)]
    progress_interval: Duration,
    /// On stop, how long buffered events may take to reach Kafka: 30s, 2m, or seconds.
    #[arg(long, env = "SITEMON_FLUSH_TIMEOUT", default_value = "30s", value_parser = crate::args::period)]
    flush_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for the checked sites, besides the Mozilla roots
    /// (for sites behind a private CA).
    #[arg(long, env = "SITEMON_SITES_CA_FILE")]
    sites_ca_file: Option<PathBuf>,
    /// Networks no check connects to, on any hop of any site: CIDRs (169.254.0.0/16,
    /// fd00::/8) or single addresses, the flag repeated or comma-separated. For a checker
    /// whose sites come from people it does not trust (README, "What a site can make the
    /// checker reach"). A hop whose addresses are all denied fails as `connect`. Empty
    /// entries (`SITEMON_DENY_CIDRS=`) are none.
    #[arg(
        long = "deny-cidr",
        env = "SITEMON_DENY_CIDRS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    deny_cidr: Vec<String>,
}

impl CheckOptions {
    /// The checker's configuration with these settings, validated.
    pub(crate) fn config(
        &self,
        database: sitemon_core::DatabaseConfig,
        kafka: sitemon_core::KafkaConfig,
    ) -> anyhow::Result<CheckerConfig> {
        let mut config = CheckerConfig::new(database, kafka);
        config.location = self.location.clone();
        config.concurrency = self.concurrency as usize;
        config.timeout = self.timeout;
        config.max_body_bytes = usize::try_from(self.max_body_bytes)?;
        config.compression = self
            .compression
            .parse::<Compression>()
            .map_err(Usage::new)?;
        config.buffer_events = usize::try_from(self.buffer_events)?;
        config.partitions = self.partitions;
        config.replication_factor = self.replication_factor;
        config.linger = Duration::from_millis(self.linger_ms);
        config.progress_every = self.progress_interval;
        config.flush_timeout = self.flush_timeout;
        config.deny_cidrs = self
            .deny_cidr
            .iter()
            .filter(|text| !text.trim().is_empty())
            .map(|text| sitemon_checker::config::parse_cidr(text))
            .collect::<Result<_, _>>()
            .map_err(|reason| Usage::new(format!("invalid --deny-cidr: {reason}")))?;
        if let Some(path) = &self.sites_ca_file {
            config.extra_root_certs = read_certificates(path)?;
        }
        config.validate().map_err(|e| match e {
            e @ sitemon_checker::Error::Config { .. } => anyhow::Error::new(Usage::new(e)),
            other => other.into(),
        })?;
        Ok(config)
    }
}

fn read_certificates(
    path: &std::path::Path,
) -> anyhow::Result<Vec<sitemon_checker::config::CertificateDer<'static>>> {
    use sitemon_checker::config::{CertificateDer, PemObject};
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read SITEMON_SITES_CA_FILE {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!("SITEMON_SITES_CA_FILE {} is not PEM ({e})", path.display())
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "SITEMON_SITES_CA_FILE {} holds no PEM certificate",
            path.display()
        );
    }
    Ok(certs)
}

pub(crate) async fn exec(args: CheckArgs) -> anyhow::Result<()> {
    // Everything the user gave is validated before the first connection.
    let mut config = args
        .options
        .config(args.services.db.config()?, args.services.kafka.config()?)?;
    let shutdown = crate::shutdown::on_signal();
    config.metrics = sitemon_core::metrics::Registry::new();
    args.services
        .metrics
        .serve(&config.metrics, &shutdown)
        .await?;
    sitemon_checker::run(config, shutdown).await.map_err(|e| {
        anyhow::anyhow!(
            "{e} (check DATABASE_URL and KAFKA_BROKERS; `scripts/services up` starts local ones)"
        )
    })
}
