//! sitemon-core against the real Kafka broker: SASL over TLS, one test per mechanism.
//!
//! `scripts/services` runs a SASL_SSL listener (`SITEMON_TEST_SASL_BROKERS`) where the user
//! `sitemon` exists for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.

use std::time::{Duration, Instant};

use sitemon_core::config::{SaslMechanism, Secret};
use sitemon_core::kafka::{self, TopicCreation};
use sitemon_core::{Error, KafkaConfig, KafkaSecurity};
use sitemon_testkit::{SASL_PASSWORD, produce_and_read_back, random_topic, sasl_kafka_settings};

/// The validated configuration of the SASL_SSL listener with `mechanism`, on a new topic.
fn sasl_config(mechanism: &str) -> KafkaConfig {
    KafkaConfig::new(sasl_kafka_settings(&random_topic(), mechanism)).expect("valid SASL settings")
}

/// Connects with `config` (SASL over TLS), creates its topic, produces one record and reads
/// it back, then deletes the topic.
async fn round_trip(config: &KafkaConfig) {
    let client = kafka::connect(config).await.expect("connects");
    let topic = &config.topic;
    assert_eq!(
        kafka::create_topic(&client, topic, 2, 1)
            .await
            .expect("creates"),
        TopicCreation::Created
    );
    assert_eq!(
        kafka::partition_count(&client, topic).await.expect("lists"),
        Some(2)
    );

    produce_and_read_back(&client, topic, 1).await;

    kafka::delete_topic(&client, topic).await.expect("deletes");
}

/// The configuration carries `expected`, so a test names the mechanism it really used.
#[track_caller]
fn assert_mechanism(config: &KafkaConfig, expected: SaslMechanism) {
    assert!(
        matches!(
            &config.security,
            KafkaSecurity::SaslTls { mechanism, ca_file: Some(_), .. } if *mechanism == expected
        ),
        "{:?}",
        config.security
    );
}

#[tokio::test]
async fn sasl_plain_round_trip() {
    let config = sasl_config("PLAIN");
    assert_mechanism(&config, SaslMechanism::Plain);
    round_trip(&config).await;
}

#[tokio::test]
async fn sasl_scram_sha_256_round_trip() {
    let config = sasl_config("SCRAM-SHA-256");
    assert_mechanism(&config, SaslMechanism::ScramSha256);
    round_trip(&config).await;
}

#[tokio::test]
async fn sasl_scram_sha_512_round_trip() {
    let config = sasl_config("SCRAM-SHA-512");
    assert_mechanism(&config, SaslMechanism::ScramSha512);
    round_trip(&config).await;
}

/// A wrong password is refused by the broker for every mechanism, and reported at once (not
/// retried until the connect deadline) as an authentication failure that names the brokers
/// and the settings to check, and never shows either password.
#[tokio::test]
async fn wrong_password_is_refused() {
    const WRONG: &str = "wrong-pw-7f3a9";
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut settings = sasl_kafka_settings(&random_topic(), mechanism);
        settings.sasl_password = Some(Secret::new(WRONG));
        let config = KafkaConfig::new(settings).expect("valid SASL settings");
        let started = Instant::now();
        let error = kafka::connect(&config)
            .await
            .expect_err(&format!("{mechanism}: the broker refuses a wrong password"));
        let elapsed = started.elapsed();
        assert!(
            matches!(error, Error::KafkaAuth { .. }) && error.is_auth_failure(),
            "{mechanism}: not an authentication failure: {error}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot connect to Kafka at {}",
                config.brokers_display()
            )),
            "{mechanism}: {message}"
        );
        assert!(
            message.contains(mechanism) && message.contains("KAFKA_SASL_PASSWORD"),
            "{mechanism}: {message}"
        );
        assert!(
            !message.contains(WRONG) && !message.contains(SASL_PASSWORD),
            "{mechanism}: a password in {message:?}"
        );
        // The kind above is the proof; this only says it was not the 20 s connect deadline.
        assert!(
            elapsed < Duration::from_secs(10),
            "{mechanism}: refused after {elapsed:?}"
        );
    }
}
