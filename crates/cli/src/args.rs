//! The argument groups several subcommands share, the value parsers of durations, and the
//! [`Usage`] error that makes the exit status 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sitemon_consume::StartFrom;
use sitemon_core::config::{DEFAULT_TOPIC, KafkaSettings};
use sitemon_core::db::PgPool;
use sitemon_core::{DatabaseConfig, KafkaConfig, Secret};

/// A setting the user gave cannot be used: the command fails before any I/O, with exit
/// status 2 (`main.rs` looks for this type in the error chain).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(String);

impl Usage {
    /// A usage error that says what `error` says.
    pub(crate) fn new(error: impl std::fmt::Display) -> Self {
        Self(error.to_string())
    }
}

impl From<sitemon_core::Error> for Usage {
    fn from(error: sitemon_core::Error) -> Self {
        Self::new(error)
    }
}

/// A value one of our own parsers refused: `main.rs` prints it as `invalid --FLAG: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InvalidValue(pub(crate) String);

/// A period such as `5s`, `500ms`, `2m` or a bare number of seconds (`1.5`), more than
/// zero and at most a day: humantime's syntax, with bare seconds kept for scripts written
/// before it.
pub(crate) fn period(text: &str) -> Result<Duration, InvalidValue> {
    duration(text, Duration::from_secs(86_400), "5s, 500ms or 2m")
}

/// A window such as `90s`, `30m`, `24h`, `7d` or `2w` (a bare number is seconds), more
/// than zero and at most ten years.
pub(crate) fn window(text: &str) -> Result<Duration, InvalidValue> {
    duration(
        text,
        Duration::from_secs(10 * 366 * 86_400),
        "90s, 30m, 24h or 7d",
    )
}

/// A reminder period: `0` (never) or a window such as 30m or 1h.
pub(crate) fn reminder(text: &str) -> Result<Duration, InvalidValue> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    window(text)
}

fn duration(text: &str, max: Duration, examples: &str) -> Result<Duration, InvalidValue> {
    let trimmed = text.trim();
    let parsed = match trimmed.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 && seconds <= max.as_secs_f64() => {
            Ok(Duration::from_secs_f64(seconds))
        }
        Ok(_) => Err(()),
        Err(_) => humantime::parse_duration(trimmed).map_err(|_| ()),
    };
    let excerpt: String = trimmed.chars().take(40).collect();
    match parsed {
        Ok(d) if !d.is_zero() && d <= max => Ok(d),
        Ok(_) => Err(InvalidValue(format!(
            "{excerpt:?} must be more than 0 and at most {}",
            humantime::format_duration(max)
        ))),
        Err(()) => Err(InvalidValue(format!(
            "{excerpt:?} is not a duration such as {examples}"
        ))),
    }
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

/// What a long-running command (`check`, `sync`, `run`) connects to, and where it serves
/// its metrics.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    #[command(flatten)]
    pub(crate) db: DatabaseArgs,
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    #[command(flatten)]
    pub(crate) metrics: MetricsArgs,
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
    /// The database's configuration; an unusable URL is a [`Usage`] error.
    pub(crate) fn config(&self) -> Result<DatabaseConfig, Usage> {
        DatabaseConfig::from_url(&self.database_url).map_err(Usage::from)
    }

    /// Connects with a small pool.
    pub(crate) async fn connect(&self) -> anyhow::Result<PgPool> {
        let config = self.config()?;
        sitemon_core::db::connect(&config, 2).await.map_err(|e| {
            if e.is_auth_failure() {
                // The server is there: the message says what to check.
                return anyhow::Error::new(e);
            }
            anyhow::anyhow!(
                "{e} (check DATABASE_URL; `scripts/services up` starts a local PostgreSQL)"
            )
        })
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
    /// The brokers' configuration; unusable settings are a [`Usage`] error.
    pub(crate) fn config(&self) -> Result<KafkaConfig, Usage> {
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
        .map_err(Usage::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_humantime_units_and_bare_seconds() {
        let secs = Duration::from_secs;
        assert_eq!(window("90s"), Ok(secs(90)));
        assert_eq!(window("90"), Ok(secs(90)));
        assert_eq!(window("30m"), Ok(secs(1_800)));
        assert_eq!(window("24h"), Ok(secs(86_400)));
        assert_eq!(window("7d"), Ok(secs(604_800)));
        assert_eq!(window("1h 30m"), Ok(secs(5_400)));
        assert_eq!(period("1.5"), Ok(Duration::from_millis(1_500)));
        assert_eq!(period("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "",
            "h",
            "0s",
            "0",
            "-5m",
            "-1",
            "soon",
            "NaN",
            "inf",
            "99999999999999999999d",
        ] {
            assert!(window(bad).is_err(), "{bad}");
        }
        assert!(period("2d").is_err(), "a period is at most a day");
        assert!(window("11y").is_err(), "a window is at most ten years");
        assert_eq!(
            window("soon"),
            Err(InvalidValue(
                "\"soon\" is not a duration such as 90s, 30m, 24h or 7d".to_owned()
            ))
        );
    }
}

/// Where a consumer (`sync --start`, `alert --alert-start`) starts reading a partition it has
/// no stored offset for: `earliest` (everything still in the topic) or `latest` (only events
/// published from now on).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Start {
    Earliest,
    Latest,
}

impl From<Start> for StartFrom {
    fn from(start: Start) -> Self {
        match start {
            Start::Earliest => Self::Earliest,
            Start::Latest => Self::Latest,
        }
    }
}
