//! The checker's settings, with their defaults.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// A network of [`CheckerConfig::deny_cidrs`].
pub use ipnet::IpNet;
pub use rustls::pki_types::CertificateDer;
pub use rustls::pki_types::pem::PemObject;
use sitemon_core::metrics::Registry;
use sitemon_core::{DatabaseConfig, KafkaConfig};

use crate::error::{Error, Result};

/// The most a single check may take unless `--timeout` says otherwise (and never more than
/// the site's interval).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an event waits for others to share its produce request, unless `--linger-ms`
/// says otherwise (see [`CheckerConfig::linger`]).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(200);

/// Everything [`run`](crate::run) needs. [`CheckerConfig::new`] fills in the defaults;
/// change the public fields to taste.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckerConfig {
    /// Where the `websites` table is.
    pub database: DatabaseConfig,
    /// Where the events go.
    pub kafka: KafkaConfig,
    /// Written into every event, so that checkers in several regions can check the same
    /// sites and their results stay apart. Default `default`.
    pub location: String,
    /// The most checks in flight at once; each is a socket. Default 1024.
    pub concurrency: usize,
    /// The limit for a whole check (DNS to the last body byte, redirects included).
    /// `None` (the default): the smaller of 10 s and the site's interval, so that a check
    /// never overlaps the next one. A site's own `timeout_ms` takes the place of this one.
    pub timeout: Option<Duration>,
    /// How much of a body is read (and searched by the regex). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Compression of the produced batches. Default [`Compression::Zstd`]: a batch of check
    /// events (JSON) shrinks to about a fifth, which the broker writes, keeps, replicates and
    /// sends to the sync in that form, for no checker CPU the pipeline benchmark can tell
    /// from noise (BENCHMARKS.md, "Pipeline": lz4 shrinks to about a quarter). Was none
    /// before the pipeline's cost was measured.
    pub compression: Compression,
    /// How many events may wait while Kafka is unreachable; beyond that the oldest are
    /// dropped and counted. Default 100,000 (a few hundred MB at most, typically ~60 MB).
    pub buffer_events: usize,
    /// Partitions of the topic when the checker has to create it. Default 6.
    pub partitions: i32,
    /// Replicas of each partition when the checker has to create the topic. Default 1 (a
    /// single broker); managed clusters want 2 or 3.
    pub replication_factor: i16,
    /// How long an event waits in its partition's lane for others to join it before they
    /// all go in one produce request. Default 200 ms. The broker's load follows the number
    /// of requests, not the events in them: a longer linger costs that much latency on the
    /// way to the database and saves the broker (and the sync, which fetches what arrived)
    /// work. At 400 checks/s over six partitions, 10 ms (the default before the pipeline was
    /// measured) sent a request per 1.2 events; 200 ms sends one per ~14.
    pub linger: Duration,
    /// The largest batch, in bytes before compression. Default 512 KiB, half of Kafka's
    /// default `max.message.bytes`.
    pub max_batch_bytes: usize,
    /// How often a progress line is logged. Default 5 s.
    pub progress_every: Duration,
    /// How often the whole site list is reloaded, besides the reloads notifications cause.
    /// Default 30 s.
    pub reload_every: Duration,
    /// How often the topic's partition count is read again (one small metadata request):
    /// how soon events follow a topic that grew or was created again with another count.
    /// Default 5 s.
    pub partition_poll_every: Duration,
    /// On stop, how long buffered events may take to reach Kafka. Default 30 s.
    pub flush_timeout: Duration,
    /// CA certificates trusted for checked sites besides the Mozilla roots (for sites
    /// behind a private CA). Default none.
    pub extra_root_certs: Vec<CertificateDer<'static>>,
    /// Networks the checks never connect to (`--deny-cidr`), for a checker whose sites are
    /// registered by people it does not trust: every hop's resolved addresses (and a literal
    /// IP host) are matched against them, a denied address is skipped, and a hop with no
    /// other address fails as `connect` ("… resolves only to denied addresses …"). An
    /// IPv4-mapped IPv6 address is matched as the IPv4 address it holds. Default none: a site
    /// may make the checker reach any address (README, "What a site can make the checker
    /// reach").
    pub deny_cidrs: Vec<IpNet>,
    /// Whether this checker shares the sites with the other checkers of the same topic and
    /// location (default `true`): the sites are hashed into
    /// [`BUCKETS`](crate::buckets::BUCKETS) buckets leased through PostgreSQL advisory locks
    /// on a dedicated connection (see [`crate::buckets`]). A single checker holds every
    /// bucket. `false`: no leases, this checker checks every site and keeps checking while
    /// PostgreSQL is away; never run two such checkers with the same location, or every site
    /// is checked twice.
    pub share_with_peers: bool,
    /// How often the bucket leases are rebalanced (give or take a quarter): how soon a
    /// checker notices one that joined or died. Default 2 s.
    pub rebalance_every: Duration,
    /// Where the checker's metrics are registered (`sitemon_checks_total` and the others of
    /// `stats.rs`): serve it with [`sitemon_core::metrics::serve`]. Default: a registry of its
    /// own that nobody reads.
    pub metrics: Registry,
}

impl CheckerConfig {
    /// The defaults for everything but where the database and Kafka are.
    pub fn new(database: DatabaseConfig, kafka: KafkaConfig) -> Self {
        Self {
            database,
            kafka,
            location: "default".into(),
            concurrency: 1024,
            timeout: None,
            max_body_bytes: 1 << 20,
            compression: Compression::Zstd,
            buffer_events: 100_000,
            partitions: sitemon_core::kafka::DEFAULT_PARTITIONS,
            replication_factor: 1,
            linger: DEFAULT_LINGER,
            max_batch_bytes: 512 << 10,
            progress_every: Duration::from_secs(5),
            reload_every: Duration::from_secs(30),
            partition_poll_every: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(30),
            extra_root_certs: Vec::new(),
            deny_cidrs: Vec::new(),
            share_with_peers: true,
            rebalance_every: Duration::from_secs(2),
            metrics: Registry::new(),
        }
    }

    /// Checks the settings before any I/O.
    ///
    /// # Errors
    /// [`Error::Config`] naming the flag and the problem.
    pub fn validate(&self) -> Result<()> {
        let invalid = |setting: &'static str, reason: &str| {
            Err(Error::Config {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.location.is_empty() || self.location.len() > 100 {
            return invalid("--location", "give a name of 1 to 100 characters");
        }
        if self.location.chars().any(char::is_control) {
            return invalid("--location", "it contains control characters");
        }
        if !(1..=100_000).contains(&self.concurrency) {
            return invalid("--concurrency", "it must be from 1 to 100000");
        }
        if let Some(timeout) = self.timeout {
            if timeout.is_zero() || timeout > Duration::from_secs(3600) {
                return invalid(
                    "--timeout",
                    "it must be more than 0 and at most 3600 seconds",
                );
            }
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 64 << 20 {
            return invalid("--max-body-bytes", "it must be from 1 byte to 64 MiB");
        }
        if self.buffer_events == 0 {
            return invalid("--buffer-events", "it must be at least 1");
        }
        if !(1..=10_000).contains(&self.partitions) {
            return invalid("--partitions", "it must be from 1 to 10000");
        }
        if !(1..=32).contains(&self.replication_factor) {
            return invalid("--replication-factor", "it must be from 1 to 32");
        }
        if !(16 << 10..=16 << 20).contains(&self.max_batch_bytes) {
            return invalid("max_batch_bytes", "it must be from 16 KiB to 16 MiB");
        }
        for (setting, every) in [
            ("progress_every", self.progress_every),
            ("reload_every", self.reload_every),
            ("partition_poll_every", self.partition_poll_every),
            ("rebalance_every", self.rebalance_every),
        ] {
            if every.is_zero() {
                return invalid(setting, "it must be more than 0");
            }
        }
        Ok(())
    }

    /// The limit for one check of a site with this interval.
    pub(crate) fn timeout_for(&self, interval: Duration) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT.min(interval))
    }
}

/// A network of `--deny-cidr`: `ADDRESS/PREFIX` (`169.254.0.0/16`, `fd00::/8`), or one address
/// alone (`/32` or `/128`); the host bits of a network are ignored (`10.1.2.3/8` is
/// `10.0.0.0/8`).
///
/// # Errors
/// A line naming the text and the expected form.
pub fn parse_cidr(text: &str) -> std::result::Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{text:?} is not a network: give ADDRESS/PREFIX (10.0.0.0/8) or an address")
        })
}

/// Compression of produced batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// LZ4.
    Lz4,
    /// Snappy.
    Snappy,
    /// Zstandard: the default (see [`CheckerConfig::compression`]).
    #[default]
    Zstd,
}

impl FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "lz4" => Ok(Self::Lz4),
            "snappy" => Ok(Self::Snappy),
            "zstd" => Ok(Self::Zstd),
            _ => Err(Error::Config {
                setting: "--compression",
                reason: format!("{s:?} is not one of none, gzip, lz4, snappy, zstd"),
            }),
        }
    }
}

impl From<Compression> for rskafka::client::partition::Compression {
    fn from(compression: Compression) -> Self {
        match compression {
            Compression::None => Self::NoCompression,
            Compression::Gzip => Self::Gzip,
            Compression::Lz4 => Self::Lz4,
            Compression::Snappy => Self::Snappy,
            Compression::Zstd => Self::Zstd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CheckerConfig {
        CheckerConfig::new(
            DatabaseConfig::from_url("postgres://u:p@127.0.0.1/db").expect("url"),
            KafkaConfig::plaintext("127.0.0.1:9092", "t").expect("kafka"),
        )
    }

    #[test]
    fn debug_prints_neither_password() {
        let database_password = "s3cret-pw-41c7";
        let sasl_password = "s3cret-sasl-93e2";
        let kafka = KafkaConfig::new(sitemon_core::KafkaSettings {
            brokers: "127.0.0.1:9093".into(),
            topic: "t".into(),
            sasl_mechanism: Some("PLAIN".into()),
            sasl_username: Some("checker".into()),
            sasl_password: Some(sitemon_core::Secret::new(sasl_password)),
            ..sitemon_core::KafkaSettings::default()
        })
        .expect("kafka");
        let database =
            DatabaseConfig::from_url(&format!("postgres://u:{database_password}@127.0.0.1/db"))
                .expect("url");
        let config = CheckerConfig::new(database, kafka);
        for debug in [format!("{config:?}"), format!("{config:#?}")] {
            assert!(!debug.contains(database_password), "{debug}");
            assert!(!debug.contains(sasl_password), "{debug}");
            assert!(debug.contains("127.0.0.1:9093"), "{debug}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(config().validate().is_ok());
    }

    #[test]
    fn bad_settings_name_their_flag() {
        type Breaker = fn(&mut CheckerConfig);
        let cases: [(Breaker, &str); 5] = [
            (|c| c.location = String::new(), "--location"),
            (|c| c.concurrency = 0, "--concurrency"),
            (|c| c.timeout = Some(Duration::ZERO), "--timeout"),
            (|c| c.buffer_events = 0, "--buffer-events"),
            (|c| c.partitions = 0, "--partitions"),
        ];
        for (break_it, flag) in cases {
            let mut config = config();
            break_it(&mut config);
            let message = config.validate().expect_err(flag).to_string();
            assert!(
                message.starts_with(&format!("invalid {flag}:")),
                "{message}"
            );
        }
    }

    #[test]
    fn timeout_defaults_to_ten_seconds_or_the_interval() {
        let mut config = config();
        assert_eq!(
            config.timeout_for(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
        assert_eq!(
            config.timeout_for(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        config.timeout = Some(Duration::from_secs(30));
        assert_eq!(
            config.timeout_for(Duration::from_secs(2)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn cidrs_parse_as_networks_or_single_addresses() {
        let net = |text| parse_cidr(text).map(|n| n.to_string());
        assert_eq!(net("169.254.0.0/16").as_deref(), Ok("169.254.0.0/16"));
        assert_eq!(net(" 10.1.2.3/8 ").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(net("127.0.0.2").as_deref(), Ok("127.0.0.2/32"));
        assert_eq!(net("fd00::/8").as_deref(), Ok("fd00::/8"));
        assert_eq!(net("::1").as_deref(), Ok("::1/128"));
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0/8", "1.2.3.4/"] {
            let message = parse_cidr(bad).expect_err(bad);
            assert!(message.contains("ADDRESS/PREFIX"), "{message}");
        }
    }

    #[test]
    fn compression_parses() {
        assert_eq!("ZSTD".parse::<Compression>().ok(), Some(Compression::Zstd));
        let message = "brotli"
            .parse::<Compression>()
            .expect_err("unknown")
            .to_string();
        assert!(
            message.contains("none, gzip, lz4, snappy, zstd"),
            "{message}"
        );
    }
}
