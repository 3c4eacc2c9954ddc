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

/// A key file whose contents are not a usable key: the error names the file and the setting,
/// and shows nothing of what the file holds, neither as text nor as the bytes that a PEM
/// parser's error would list.
#[tokio::test]
async fn key_file_contents_never_appear_in_errors() {
    // Base64's alphabet only, so that it also passes as the body of a PEM section.
    const MARKER: &str = "s3cretKEYmaterial41c7xyz";
    let marker_bytes = format!("{:?}", MARKER.as_bytes());
    let marker_bytes = marker_bytes.trim_start_matches('[').trim_end_matches(']');
    let pem =
        |body: &str| format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let contents = [
        ("no PEM at all", format!("the key is {MARKER}\n")),
        ("a section whose body is not a key", pem(MARKER)),
        (
            "a section whose body is not base64",
            pem(&format!("{MARKER}-!")),
        ),
        ("a malformed BEGIN line", format!("-----BEGIN {MARKER}\n")),
        (
            "a section with no END line",
            format!("-----BEGIN {MARKER}-----\nAAAA\n"),
        ),
        (
            "an unfinished key section",
            format!("-----BEGIN PRIVATE KEY-----\n{MARKER}\n"),
        ),
    ];
    for (index, (what, content)) in contents.into_iter().enumerate() {
        let key_file =
            std::env::temp_dir().join(format!("sitemon-key-{}-{index}.key", std::process::id()));
        std::fs::write(&key_file, &content).expect("write the key file");
        let mut settings = tls_kafka_settings(&random_topic());
        settings.key_file = Some(key_file.clone());
        let config = KafkaConfig::new(settings).expect("files are read on connect");
        let result = tokio::time::timeout(Duration::from_secs(30), kafka::connect(&config))
            .await
            .unwrap_or_else(|_| panic!("{what}: connect did not end within 30 s"));
        std::fs::remove_file(&key_file).expect("remove the key file");
        let error = result.expect_err(what);
        let shown = format!("{error}");
        assert!(
            shown.contains("KAFKA_KEY_FILE") && shown.contains(&*key_file.to_string_lossy()),
            "{what}: the file is not named in {shown:?}"
        );
        for text in [shown, format!("{error:?}")] {
            assert!(!text.contains(MARKER), "{what}: key contents in {text:?}");
            assert!(
                !text.contains(marker_bytes),
                "{what}: key contents as bytes in {text:?}"
            );
        }
    }
}
