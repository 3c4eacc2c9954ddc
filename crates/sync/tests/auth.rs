//! The sync's start when PostgreSQL or Kafka refuses the login: an error at once that says
//! so ([`sitemon_sync::Error::is_auth_failure`]), never retried, never with the password.

use std::time::{Duration, Instant};

use sitemon_core::config::Secret;
use sitemon_core::{DatabaseConfig, KafkaConfig};
use sitemon_sync::SyncConfig;
use sitemon_testkit::{TestDb, kafka_config, random_topic, sasl_kafka_settings};
use tokio_util::sync::CancellationToken;

const WRONG: &str = "wrong-pw-7f3a9";

/// Runs the sync with `config`, which must fail to start; returns the error and how long
/// it took.
/// Starts the sync with `config` and asserts that it stops with a refused login, at once
/// and without the password in its message.
async fn assert_refused_at_once(config: SyncConfig) {
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        sitemon_sync::run(config, CancellationToken::new()),
    )
    .await
    .expect("the sync gives up its start within 60 s")
    .expect_err("the login is refused");
    let elapsed = started.elapsed();
    assert!(
        error.is_auth_failure(),
        "not an authentication failure: {error}"
    );
    assert!(!error.to_string().contains(WRONG), "{error}");
    // The kind is the proof; this only says it was not a connect timeout.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test]
async fn a_refused_database_login_stops_the_start_at_once() {
    let db = TestDb::migrated().await;
    let url = db
        .url
        .replacen("sitemon:sitemon@", &format!("sitemon:{WRONG}@"), 1);
    assert_ne!(url, db.url, "DATABASE_URL has no password to change");
    let config = SyncConfig::new(
        DatabaseConfig::from_url(&url).expect("parses"),
        kafka_config(&random_topic()),
    );
    assert_refused_at_once(config).await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_refused_kafka_login_stops_the_start_at_once() {
    let db = TestDb::migrated().await;
    let mut settings = sasl_kafka_settings(&random_topic(), "SCRAM-SHA-512");
    settings.sasl_password = Some(Secret::new(WRONG));
    let config = SyncConfig::new(
        DatabaseConfig::from_url(&db.url).expect("parses"),
        KafkaConfig::new(settings).expect("valid SASL settings"),
    );
    assert_refused_at_once(config).await;
    db.drop_database().await;
}
