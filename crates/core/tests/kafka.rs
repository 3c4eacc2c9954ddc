//! sitemon-core against the real Kafka broker: plaintext and mutual TLS.

use std::time::Duration;

use rskafka::client::Client;
use sitemon_core::kafka::{self, TopicCreation};
use sitemon_core::{Error, KafkaConfig};
use sitemon_testkit::{kafka_config, produce_and_read_back, random_topic, tls_kafka_settings};

/// Creates `config.topic` (twice: the second is not an error), produces one record and reads
/// it back from the partition it went to.
async fn round_trip(config: &KafkaConfig) {
    let client = kafka::connect(config).await.expect("connects");
    let topic = &config.topic;
    assert_eq!(
        kafka::create_topic(&client, topic, 3, 1)
            .await
            .expect("creates"),
        TopicCreation::Created
    );
    assert_eq!(
        kafka::create_topic(&client, topic, 3, 1)
            .await
            .expect("exists"),
        TopicCreation::AlreadyExists
    );
    assert_eq!(
        kafka::partition_count(&client, topic).await.expect("lists"),
        Some(3)
    );

    produce_and_read_back(&client, topic, 2).await;

    delete(&client, topic).await;
}

async fn delete(client: &Client, topic: &str) {
    kafka::delete_topic(client, topic).await.expect("deletes");
}

#[tokio::test]
async fn plaintext_round_trip() {
    round_trip(&kafka_config(&random_topic())).await;
}

#[tokio::test]
async fn mutual_tls_round_trip() {
    let config = KafkaConfig::new(tls_kafka_settings(&random_topic())).expect("valid TLS settings");
    assert!(matches!(
        config.security,
        sitemon_core::KafkaSecurity::Tls {
            client: Some(_),
            ..
        }
    ));
    round_trip(&config).await;
}

#[tokio::test]
async fn tls_listener_refuses_a_client_without_certificate() {
    let mut settings = tls_kafka_settings(&random_topic());
    settings.cert_file = None;
    settings.key_file = None;
    let config = KafkaConfig::new(settings).expect("CA-only TLS is a valid configuration");
    let started = std::time::Instant::now();
    let error = kafka::connect_with_backoff(&config, kafka::backoff(Duration::from_secs(3)))
        .await
        .expect_err("the broker requires a client certificate");
    assert!(
        matches!(error, Error::KafkaAuth { .. }) && error.is_auth_failure(),
        "unexpected error: {error}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot connect to Kafka at {}",
            config.brokers_display()
        )),
        "{message}"
    );
    assert!(message.contains("KAFKA_CERT_FILE"), "{message}");
    // Not a timing assertion on speed: only that the refusal surfaced instead of hanging.
    assert!(started.elapsed() < kafka::CONNECT_TIMEOUT * 2);
}

/// A client certificate that the broker's CA did not sign is refused in the TLS handshake:
/// an authentication failure, reported at once instead of retried until the connect
/// deadline, that names the certificate file and never shows the key.
#[tokio::test]
async fn tls_listener_refuses_a_certificate_its_ca_did_not_sign() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let key_file = fixtures.join("untrusted-client.key");
    let mut settings = tls_kafka_settings(&random_topic());
    settings.cert_file = Some(fixtures.join("untrusted-client.pem"));
    settings.key_file = Some(key_file.clone());
    let config = KafkaConfig::new(settings).expect("valid TLS settings");
    let started = std::time::Instant::now();
    let error = kafka::connect(&config)
        .await
        .expect_err("the broker refuses a certificate its CA did not sign");
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(
        matches!(error, Error::KafkaAuth { .. }) && error.is_auth_failure(),
        "not an authentication failure: {message}"
    );
    assert!(
        message.contains("client certificate") && message.contains("untrusted-client.pem"),
        "{message}"
    );
    let key = std::fs::read_to_string(&key_file).expect("the fixture key");
    for line in key.lines().filter(|line| !line.starts_with("-----")) {
        assert!(!message.contains(line), "key material in {message:?}");
    }
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    // The kind above is the proof; this only says it was not the 20 s connect deadline.
    assert!(
        elapsed < Duration::from_secs(10),
        "refused after {elapsed:?}"
    );
}

#[tokio::test]
async fn tls_without_our_ca_fails_verification() {
    let mut settings = tls_kafka_settings(&random_topic());
    // The public web roots do not know the throwaway CA that signed the broker.
    settings.ca_file = None;
    let config = KafkaConfig::new(settings).expect("valid");
    let error = kafka::connect_with_backoff(&config, kafka::backoff(Duration::from_secs(3)))
        .await
        .expect_err("the broker's certificate is not trusted");
    assert!(matches!(error, Error::KafkaConnect { .. }), "{error}");
}

#[tokio::test]
async fn missing_tls_files_are_named() {
    let mut settings = tls_kafka_settings(&random_topic());
    settings.ca_file = Some("/nonexistent/ca.pem".into());
    let config = KafkaConfig::new(settings).expect("files are read on connect");
    let message = kafka::connect(&config)
        .await
        .expect_err("no CA file")
        .to_string();
    assert!(
        message.starts_with("cannot use KAFKA_CA_FILE file /nonexistent/ca.pem:"),
        "{message}"
    );
}

#[tokio::test]
async fn unreachable_broker_is_named() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let config = KafkaConfig::plaintext("127.0.0.1:1", "website_status").expect("valid");
    let error = kafka::connect_with_backoff(&config, kafka::backoff(Duration::from_secs(2)))
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        error
            .to_string()
            .starts_with("cannot connect to Kafka at 127.0.0.1:1:"),
        "{error}"
    );
}
