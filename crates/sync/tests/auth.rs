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
async fn refused_start(config: SyncConfig) -> (sitemon_sync::Error, Duration) {
    let started = Instant::now();
    let error = sitemon_sync::run(config, CancellationToken::new())
        .await
        .expect_err("the login is refused");
    (error, started.elapsed())
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
    let (error, elapsed) = refused_start(config).await;
    assert!(
        error.is_auth_failure(),
        "not an authentication failure: {error}"
    );
    assert!(!error.to_string().contains(WRONG), "{error}");
    // The kind is the proof; this only says it was not a connect timeout.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
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
    let (error, elapsed) = refused_start(config).await;
    assert!(
        error.is_auth_failure(),
        "not an authentication failure: {error}"
    );
    assert!(!error.to_string().contains(WRONG), "{error}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    db.drop_database().await;
}
