//! The vocabulary every part of sitemon shares.
//!
//! sitemon's data flows one way: the checker (`sitemon-checker`) probes sites and publishes
//! one [`CheckEvent`] per check to Kafka; two consumers read the events, the sync
//! (`sitemon-sync`) into PostgreSQL's history and the alert service (`sitemon-alert`) into
//! incidents and notifications, both on the exactly-once consumer of `sitemon-consume`; the
//! dashboard (`sitemon-web`) and the CLI read what they stored. None of them imports another;
//! they share this crate: the site and its validation, the event, configuration, errors,
//! retries, metrics, the Kafka client, and (for now) the database's schema, history and
//! reports.
//!
//! # Layout
//! - [`site`]: a monitored [`Site`], its [`SiteSettings`] and the validation of what a user
//!   may register.
//! - [`site_alerts`]: a site's own alert settings ([`SiteAlerts`]), validated with the rest.
//! - [`sites_file`]: sites as code: a YAML file of sites read (`sitemon apply`) and written
//!   (`sitemon export`), errors naming file, line and column.
//! - [`apply`]: the plan that makes `websites` what a sites file says, applied in one
//!   transaction.
//! - [`event`]: the [`CheckEvent`] on the wire (JSON, versioned) and its Kafka key.
//! - [`config`]: connection settings for Kafka ([`KafkaConfig`]) and PostgreSQL ([`DatabaseConfig`]).
//! - [`kafka`]: building an rskafka client from a [`KafkaConfig`] (plaintext, mTLS, SASL),
//!   and the topic utilities.
//! - [`db`]: the pool, the embedded migrations, and the `websites` table.
//! - [`mask`]: the one masking of URLs (credentials, query values) for every output, every URL
//!   a message quotes, and the bound on a message's length ([`mask::MAX_MESSAGE_BYTES`]).
//! - [`metrics`]: the `prometheus-client` registry every part registers in, and
//!   the `/metrics` server (OpenMetrics text).
//! - [`history`]: `website_status` partitioned by day, retention, and the hourly and daily
//!   rollups the sync keeps in the same transaction as the rows.
//! - [`report`]: the operator's view of the history (`sitemon status`, `sitemon history`),
//!   from the rollups.
//! - [`dashboard`]: what the dashboard shows beyond the reports: uptime day by day, a
//!   site's latest checks with their timing phases.
//! - [`incidents`]: the incidents alerting opened, with their notifications' delivery.
//! - [`retry`]: [`retry::Backoff`] between attempts and [`retry::timeout`] around every call
//!   that can hang.
//! - [`statement`]: one statement run with a timeout, its error naming what it was doing.
//! - [`error`]: this crate's [`Error`].
//!
//! # Example
//! Register a site from another Rust service:
//! ```no_run
//! use sitemon_core::{DatabaseConfig, NewSite, db};
//!
//! # async fn example() -> sitemon_core::Result<()> {
//! let config = DatabaseConfig::from_url("postgres://sitemon:sitemon@127.0.0.1/sitemon?sslmode=require")?;
//! let pool = db::connect(&config, 4).await?;
//! db::migrate(&pool).await?;
//! let site = NewSite::new("https://example.com/health", 30, Some("ok"))?;
//! let id = db::insert_site(&pool, &site).await?;
//! println!("registered site {id}");
//! # Ok(())
//! # }
//! ```

pub mod apply;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod event;
pub mod history;
pub mod incidents;
pub mod kafka;
pub mod mask;
pub mod metrics;
mod refusal;
pub mod report;
pub mod retry;
pub mod site;
pub mod site_alerts;
pub mod sites_file;
pub mod statement;

pub use config::{
    ClientCertFiles, DatabaseConfig, KafkaConfig, KafkaSecurity, KafkaSettings, SaslMechanism,
    Secret,
};
pub use error::{Error, Result};
pub use event::{Assertion, CheckError, CheckEvent, ErrorKind, ProbeTimings};
pub use site::{ExpectStatus, Method, NewSite, Site, SiteSettings};
pub use site_alerts::SiteAlerts;

/// The version of sitemon, as written into the `User-Agent` and the Kafka client id.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
