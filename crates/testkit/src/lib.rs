//! Fixtures for sitemon's integration tests.
//!
//! Tests run against the real PostgreSQL and Apache Kafka that `scripts/services up` starts
//! on loopback (`scripts/test` starts them and exports their settings). Each test gets a
//! database of its own ([`TestDb`]) and a topic of its own ([`random_topic`]), so tests run
//! in parallel without seeing each other.
//!
//! A test that cannot reach its services fails with a message that says how to start them:
//! it never passes by skipping.
//!
//! # Layout
//! - this file: where the services are ([`services`]), a database of the test's own
//!   ([`TestDb`]), topic names and Kafka settings, and [`Outage`] for the tests that stop a
//!   service;
//! - [`service`]: a library service (`sitemon_checker::run`, `sitemon_sync::run`) running in
//!   the test, stopped with a bound;
//! - [`topic`]: a topic created for the test, and its records read back;
//! - [`stored`]: what the sync stored, waiting for it, and "every message stored exactly once";
//! - [`events`]: made-up check events;
//! - [`http`]: a local HTTP(S) server whose paths behave as their names say;
//! - [`metrics`]: the names and labels on a `/metrics` page;
//! - [`receiver`]: an HTTP receiver that records requests and answers as told (alerts).
//!
//! This crate depends on `sitemon-core` only: core's own tests use it, and the checker's and
//! the sync's tests must not see each other.

pub mod events;
pub mod http;
pub mod metrics;
pub mod receiver;
pub mod service;
pub mod stored;
pub mod topic;

use std::path::PathBuf;
use std::sync::OnceLock;

use sitemon_core::config::{KafkaSettings, Secret};
use sitemon_core::{DatabaseConfig, KafkaConfig, NewSite};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// The message every fixture gives when the services are not configured.
pub const HOW_TO_START: &str = "start the test services with `scripts/services up` and \
    `eval \"$(scripts/services env)\"`, or run the whole suite with `scripts/test`";

/// Where the services are, from the environment `scripts/services env` prints.
#[derive(Debug, Clone)]
pub struct Services {
    /// `DATABASE_URL`: a role that may create databases.
    pub database_url: String,
    /// `KAFKA_BROKERS`: the plaintext listener.
    pub kafka_brokers: String,
    /// `SITEMON_TEST_TLS_BROKERS`: the listener that requires a client certificate.
    pub tls_brokers: String,
    /// `SITEMON_TEST_SASL_BROKERS`: the SASL_SSL listener (no client certificate), where
    /// [`SASL_USERNAME`] exists for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.
    pub sasl_brokers: String,
    /// `SITEMON_TEST_CERT_DIR`: `ca.pem`, `service.cert`, `service.key`.
    pub cert_dir: PathBuf,
}

/// The SASL user `scripts/services` creates on the SASL_SSL listener.
pub const SASL_USERNAME: &str = "sitemon";
/// The password of [`SASL_USERNAME`] (a throwaway, for every mechanism).
pub const SASL_PASSWORD: &str = "sitemon-sasl";

/// The configured services.
///
/// # Panics
/// When a variable is missing, with [`HOW_TO_START`].
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| panic!("{name} is not set: {HOW_TO_START}"))
        };
        Services {
            database_url: var("DATABASE_URL"),
            kafka_brokers: var("KAFKA_BROKERS"),
            tls_brokers: var("SITEMON_TEST_TLS_BROKERS"),
            sasl_brokers: var("SITEMON_TEST_SASL_BROKERS"),
            cert_dir: PathBuf::from(var("SITEMON_TEST_CERT_DIR")),
        }
    })
}

/// A fresh name with `prefix`, unique across processes and runs.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A topic name no other test uses.
pub fn random_topic() -> String {
    unique_name("sitemon-test")
}

/// A plaintext Kafka configuration for `topic`.
pub fn kafka_config(topic: &str) -> KafkaConfig {
    KafkaConfig::plaintext(&services().kafka_brokers, topic).expect("valid plaintext settings")
}

/// The settings of the mTLS listener, with our client certificate.
pub fn tls_kafka_settings(topic: &str) -> KafkaSettings {
    let services = services();
    KafkaSettings {
        brokers: services.tls_brokers.clone(),
        topic: topic.to_owned(),
        ca_file: Some(services.cert_dir.join("ca.pem")),
        cert_file: Some(services.cert_dir.join("service.cert")),
        key_file: Some(services.cert_dir.join("service.key")),
        ..KafkaSettings::default()
    }
}

/// The settings of the SASL_SSL listener as our SASL user, with `mechanism` (`PLAIN`,
/// `SCRAM-SHA-256` or `SCRAM-SHA-512`, as `KAFKA_SASL_MECHANISM` takes it) and our CA.
pub fn sasl_kafka_settings(topic: &str, mechanism: &str) -> KafkaSettings {
    let services = services();
    KafkaSettings {
        brokers: services.sasl_brokers.clone(),
        topic: topic.to_owned(),
        ca_file: Some(services.cert_dir.join("ca.pem")),
        sasl_mechanism: Some(mechanism.to_owned()),
        sasl_username: Some(SASL_USERNAME.to_owned()),
        sasl_password: Some(Secret::new(SASL_PASSWORD)),
        ..KafkaSettings::default()
    }
}

/// Replaces the database name in a `postgres://` URL, keeping credentials and parameters.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database of the test's own, created on the configured server.
///
/// Dropped by [`TestDb::drop_database`] at the end of a test; `scripts/test` also drops the
/// leftovers of tests that panicked before that.
#[derive(Debug)]
pub struct TestDb {
    /// The database's name.
    pub name: String,
    /// A URL for it, with the same credentials and TLS parameters as `DATABASE_URL`.
    pub url: String,
    /// A small pool on it.
    pub pool: PgPool,
    /// Whether the database is owned by a login role of its own, named like it (see
    /// [`TestDb::empty_with_own_role`]), dropped with it.
    own_role: bool,
}

impl TestDb {
    /// A new database with sitemon's schema applied.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        sitemon_core::db::migrate(&db.pool)
            .await
            .expect("migrations apply");
        db
    }

    /// A new, empty database.
    pub async fn empty() -> Self {
        let admin = admin_pool().await;
        let name = unique_name("sitemon_t");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        admin.close().await;
        let url = url_with_database(&services().database_url, &name);
        let config = DatabaseConfig::from_url(&url).expect("test database URL parses");
        let pool = sitemon_core::db::connect(&config, 4)
            .await
            .unwrap_or_else(|e| panic!("{e}: {HOW_TO_START}"));
        Self {
            name,
            url,
            pool,
            own_role: false,
        }
    }

    /// A new, empty database owned by a login role of its own, named like it, whose password
    /// is random and distinctive (unlike `sitemon`'s, which equals its user name): for tests
    /// that look for the password in what sitemon prints. Returns the database (its
    /// [`TestDb::url`] and [`TestDb::pool`] log in as that role) and the password.
    ///
    /// The role is made through the services' superuser, `postgres`, which `scripts/services`
    /// lets in by trust on its private socket only (the `sitemon` role may not create roles).
    pub async fn empty_with_own_role() -> (Self, String) {
        let superuser = superuser_pool().await;
        let name = unique_name("sitemon_t");
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let services_user = connect_options(&services().database_url)
            .get_username()
            .to_owned();
        for statement in [
            format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
            format!("CREATE DATABASE {name} OWNER {name}"),
            // The services' own role may drop the database: `scripts/test` clears the
            // databases of tests that panicked with it.
            format!("GRANT {name} TO \"{services_user}\""),
        ] {
            sqlx::query(&statement)
                .execute(&superuser)
                .await
                .unwrap_or_else(|e| panic!("{statement:?} as the superuser: {e}"));
        }
        superuser.close().await;
        let url = url_with_credentials(
            &url_with_database(&services().database_url, &name),
            &name,
            &password,
        );
        let config = DatabaseConfig::from_url(&url).expect("test database URL parses");
        let pool = sitemon_core::db::connect(&config, 4)
            .await
            .unwrap_or_else(|e| panic!("{e}: {HOW_TO_START}"));
        let db = Self {
            name,
            url,
            pool,
            own_role: true,
        };
        (db, password)
    }

    /// Registers `n` sites (`http://127.0.0.1:9/site-N`, every 5 s) and returns their ids:
    /// sites for the events of a test that runs no checker.
    pub async fn add_sites(&self, n: usize) -> Vec<i32> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let site = NewSite::new(&format!("http://127.0.0.1:9/site-{i}"), 5, None)
                .expect("a valid site");
            ids.push(
                sitemon_core::db::insert_site(&self.pool, &site)
                    .await
                    .expect("site added"),
            );
        }
        ids
    }

    /// Drops the database (and ends its sessions), and its own role if it has one.
    ///
    /// Tried up to 20 times, 250 ms apart: a session of another role in the database (seen
    /// here: "must be a member of the role whose process is being terminated") cannot be
    /// ended by `WITH (FORCE)` and usually goes away by itself within moments.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let admin = if self.own_role {
            superuser_pool().await
        } else {
            admin_pool().await
        };
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut attempts = 0;
        loop {
            match sqlx::query(&statement).execute(&admin).await {
                Ok(_) => break,
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    eprintln!("dropping test database {} again: {e}", self.name);
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => panic!(
                    "cannot drop test database {} after 20 tries: {e}",
                    self.name
                ),
            }
        }
        if self.own_role {
            sqlx::query(&format!("DROP ROLE IF EXISTS {}", self.name))
                .execute(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot drop test role {}: {e}", self.name));
        }
        admin.close().await;
    }
}

/// A one-connection pool on the services' PostgreSQL as its superuser, `postgres`, over the
/// private socket `scripts/services` keeps in its state folder (trust there, and only there).
async fn superuser_pool() -> PgPool {
    let state = services()
        .cert_dir
        .parent()
        .expect("the certificates live in the services' state folder");
    let socket = state.join("postgres/socket");
    let port = connect_options(&services().database_url).get_port();
    let options = PgConnectOptions::new()
        .socket(&socket)
        .port(port)
        .username("postgres")
        .database("postgres");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the services' superuser on {} (port {port}): {e}: {HOW_TO_START}",
                socket.display()
            )
        })
}

/// Replaces the user and password in a `postgres://` URL, keeping the rest.
fn url_with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// A one-connection pool on the database `DATABASE_URL` names.
pub async fn admin_pool() -> PgPool {
    let config = DatabaseConfig::from_url(&services().database_url)
        .unwrap_or_else(|e| panic!("{e}: {HOW_TO_START}"));
    sitemon_core::db::connect(&config, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}: {HOW_TO_START}"))
}

/// Connection options for the configured server with another URL's parameters; handy for
/// trying other `sslmode`s.
pub fn connect_options(url: &str) -> PgConnectOptions {
    url.parse().expect("a valid postgres URL")
}

/// Produces one record to `partition` of `topic` and reads it back, asserting it is the
/// only record there: the round trip every listener (plaintext, mTLS, SASL) must pass.
pub async fn produce_and_read_back(client: &rskafka::client::Client, topic: &str, partition: i32) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    let record = rskafka::record::Record {
        key: Some(b"42".to_vec()),
        value: Some(br#"{"hello":"kafka"}"#.to_vec()),
        headers: std::collections::BTreeMap::new(),
        timestamp: chrono::Utc::now(),
    };
    let partition = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let offsets = partition
        .produce(vec![record.clone()], Compression::NoCompression)
        .await
        .expect("produces");
    assert_eq!(offsets, [0]);
    let (records, high_watermark) = partition
        .fetch_records(0, 1..1_000_000, 1_000)
        .await
        .expect("fetches");
    assert_eq!(high_watermark, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset, 0);
    assert_eq!(records[0].record.key, record.key);
    assert_eq!(records[0].record.value, record.value);
}

/// Runs `scripts/services COMMAND` (`stop-kafka`, `start-postgres`, `restart-postgres`...)
/// and waits for it.
///
/// # Panics
/// When the script fails.
pub fn services_script(command: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services");
    let status = std::process::Command::new(script)
        .arg(command)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        status.success(),
        "scripts/services {command} failed: {status}"
    );
}

/// A service of `scripts/services` that a test can stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The Kafka broker (every listener).
    Kafka,
    /// PostgreSQL.
    Postgres,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Postgres => "postgres",
        }
    }
}

/// A service stopped for a test: started again by [`Outage::end`], or when dropped, however
/// the test ends, so that no later test finds it down.
///
/// Stopping a shared service disturbs every test that runs at that moment: a test that uses
/// it belongs in a test binary of its own (cargo runs test binaries one after the other).
#[derive(Debug)]
pub struct Outage {
    service: Service,
    stopped: bool,
}

impl Outage {
    /// Stops `service` (`scripts/services stop-...`).
    pub fn begin(service: Service) -> Self {
        services_script(&format!("stop-{}", service.name()));
        Self {
            service,
            stopped: true,
        }
    }

    /// Starts the service again and waits until it answers.
    pub fn end(&mut self) {
        services_script(&format!("start-{}", self.service.name()));
        self.stopped = false;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.stopped {
            services_script(&format!("start-{}", self.service.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/sitemon?sslmode=require", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=require"
        );
        assert_eq!(url_with_database("postgres://h", "t2"), "postgres://h/t2");
    }
}
