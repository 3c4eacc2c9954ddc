//! The command line: one root [`Cli`], one [`Command`] per subcommand, and the settings
//! several subcommands share. Every setting is a flag with an environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sitemon_core::config::{DEFAULT_TOPIC, KafkaSettings};
use sitemon_core::{DatabaseConfig, KafkaConfig, Secret};

use crate::commands;

/// Watches websites: checks each on its own interval, publishes every check to Apache Kafka,
/// and keeps the history in PostgreSQL.
#[derive(Debug, Parser)]
#[command(
    name = "sitemon",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or update the database schema (safe to run again).
    Migrate(commands::migrate::MigrateArgs),
    /// Register a site to check; prints its id alone on stdout.
    AddSite(commands::add_site::AddSiteArgs),
    /// Remove a site and all its history.
    RemoveSite(commands::remove_site::RemoveSiteArgs),
    /// List the registered sites.
    ListSites(commands::list_sites::ListSitesArgs),
    /// Every site's state: last check, up or down, uptime and response times over a window.
    Status(commands::status::StatusArgs),
    /// Create or delete the Kafka topic of the check events.
    #[command(subcommand)]
    Topic(commands::topic::TopicCommand),
    /// Check every site on its interval and publish one event per check to Kafka.
    Check(commands::check::CheckArgs),
    /// Consume the check events from Kafka into PostgreSQL, exactly once.
    Sync(commands::sync::SyncArgs),
    /// Migrate, then check and sync in one process (still through Kafka): sitemon, small.
    Run(commands::run::RunArgs),
}

/// Settings for every subcommand.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Log filter, e.g. `info` or `sitemon=debug` (tracing's `EnvFilter` syntax).
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = "info,rskafka=error,sqlx=error",
        global = true
    )]
    pub(crate) log: String,
    /// Log lines for people (`text`) or one JSON object per line for log shippers (`json`).
    #[arg(long, env = "SITEMON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

impl GlobalArgs {
    /// Logs go to stderr, so that stdout carries only a command's output.
    pub(crate) fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let logger = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => logger
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
            LogFormat::Json => logger.json().with_current_span(false).init(),
        }
    }
}

/// Where to serve Prometheus metrics.
#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 or 0.0.0.0:9464.
    /// Off when not given.
    #[arg(long, env = "SITEMON_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

impl MetricsArgs {
    /// Starts serving `registry` if an address was given; the server stops with `shutdown`.
    pub(crate) async fn serve(
        &self,
        registry: &sitemon_core::metrics::Registry,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_addr {
            let bound =
                sitemon_core::metrics::serve(addr, registry.clone(), shutdown.clone()).await?;
            tracing::info!("metrics at http://{bound}/metrics");
        }
        Ok(())
    }
}

/// Where PostgreSQL is.
#[derive(Debug, Args)]
pub(crate) struct DatabaseArgs {
    /// PostgreSQL URL: postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=require.
    /// `sslmode` may be disable, prefer, require, verify-ca or verify-full (with
    /// `sslrootcert=PATH` for the CA).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: String,
}

impl DatabaseArgs {
    pub(crate) fn config(&self) -> sitemon_core::Result<DatabaseConfig> {
        DatabaseConfig::from_url(&self.database_url)
    }
}

/// Where Kafka is, and how to authenticate.
#[derive(Debug, Args)]
pub(crate) struct KafkaArgs {
    /// Bootstrap brokers, comma-separated HOST:PORT (Aiven: the service URI).
    #[arg(long, env = "KAFKA_BROKERS")]
    pub(crate) kafka_brokers: String,
    /// The topic of the check events.
    #[arg(long, env = "KAFKA_TOPIC", default_value = DEFAULT_TOPIC)]
    pub(crate) kafka_topic: String,
    /// CA certificate (PEM) that signed the brokers' certificates; turns TLS on
    /// (Aiven: ca.pem). Without it, TLS trusts the public web roots.
    #[arg(long, env = "KAFKA_CA_FILE")]
    pub(crate) kafka_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that require one (Aiven: service.cert).
    #[arg(long, env = "KAFKA_CERT_FILE")]
    pub(crate) kafka_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM) (Aiven: service.key).
    #[arg(long, env = "KAFKA_KEY_FILE")]
    pub(crate) kafka_key_file: Option<PathBuf>,
    /// SASL over TLS: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM")]
    pub(crate) kafka_sasl_mechanism: Option<String>,
    /// SASL user.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub(crate) kafka_sasl_username: Option<String>,
    /// SASL password.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub(crate) kafka_sasl_password: Option<String>,
}

impl KafkaArgs {
    pub(crate) fn config(&self) -> sitemon_core::Result<KafkaConfig> {
        let non_empty = |v: &Option<PathBuf>| v.clone().filter(|p| !p.as_os_str().is_empty());
        KafkaConfig::new(KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            topic: self.kafka_topic.clone(),
            ca_file: non_empty(&self.kafka_ca_file),
            cert_file: non_empty(&self.kafka_cert_file),
            key_file: non_empty(&self.kafka_key_file),
            sasl_mechanism: self.kafka_sasl_mechanism.clone(),
            sasl_username: self.kafka_sasl_username.clone(),
            sasl_password: self.kafka_sasl_password.clone().map(Secret::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
