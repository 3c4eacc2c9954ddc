//! Building an rskafka [`Client`] from a [`KafkaConfig`], and the topic utilities.
//!
//! rskafka 0.6 retries forever and has no timeouts of its own: every call here is bounded by
//! [`retry::timeout`], and the client's retries back off with a deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientCertFiles, KafkaConfig, KafkaSecurity, SaslMechanism};
use crate::error::{Error, Result};
use crate::refusal::{self, Refusal, refusal};
use crate::retry;

/// How long connecting to the cluster (the first metadata round trip) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one administrative request (create or delete a topic) may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The partitions a topic gets when sitemon creates it.
pub const DEFAULT_PARTITIONS: i32 = 6;

/// The backoff sitemon gives rskafka: quick first retries, a cap, and a deadline so that a
/// dead broker surfaces as an error instead of an endless retry loop.
pub fn backoff(deadline: Duration) -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(deadline),
    }
}

/// Connects to the cluster: TLS and SASL as configured, then one metadata round trip.
///
/// # Errors
/// [`Error::TlsFile`] for a TLS file that cannot be used; [`Error::KafkaAuth`] at once when a
/// broker refuses the SASL login or the client certificate; [`Error::KafkaConnect`] when no
/// broker answers within [`CONNECT_TIMEOUT`].
pub async fn connect(config: &KafkaConfig) -> Result<Client> {
    connect_with_backoff(config, backoff(CONNECT_TIMEOUT)).await
}

/// Like [`connect`], with the backoff the client keeps for all later requests.
///
/// rskafka retries a refused login like a lost connection, until the backoff's deadline
/// (`connect_to_a_broker_with_retry`), and the client keeps that backoff for good. So, over
/// TLS, a first client tries each broker once, without retrying: a refusal ends the connect
/// at once. The client returned is a second one, with `backoff`; a broker that is away is
/// waited for as before.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with_backoff(config: &KafkaConfig, backoff: BackoffConfig) -> Result<Client> {
    let tls = match &config.security {
        KafkaSecurity::Plaintext => None,
        KafkaSecurity::Tls { ca_file, client } => {
            Some(tls_client_config(ca_file.as_deref(), client.as_ref())?)
        }
        KafkaSecurity::SaslTls { ca_file, .. } => {
            Some(tls_client_config(ca_file.as_deref(), None)?)
        }
    };
    let started = tokio::time::Instant::now();
    // Plaintext has no login to refuse: no first client.
    if tls.is_some() {
        let once = BackoffConfig {
            deadline: Some(Duration::ZERO),
            ..backoff.clone()
        };
        let first = client_builder(config, tls.clone(), once).build();
        match tokio::time::timeout(CONNECT_TIMEOUT, first).await {
            Err(_) => return Err(no_answer(config)),
            Ok(Err(e)) if is_auth_failure(&e) => return Err(refused(config, &e)),
            // Dropped: its backoff gives up at the first error.
            Ok(_) => {}
        }
    }
    let left = CONNECT_TIMEOUT.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, client_builder(config, tls, backoff).build()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) if is_auth_failure(&e) => Err(refused(config, &e)),
        Ok(Err(e)) => Err(Error::KafkaConnect {
            brokers: config.brokers_display(),
            reason: crate::error::one_line(&e.to_string()),
        }),
        Err(_) => Err(no_answer(config)),
    }
}

fn client_builder(
    config: &KafkaConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    backoff: BackoffConfig,
) -> ClientBuilder {
    let mut builder = ClientBuilder::new(config.brokers.clone())
        .client_id(format!("sitemon/{}", crate::VERSION))
        .backoff_config(backoff);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls);
    }
    if let KafkaSecurity::SaslTls {
        mechanism,
        username,
        password,
        ..
    } = &config.security
    {
        let credentials = Credentials::new(username.clone(), password.expose().to_owned());
        builder = builder.sasl_config(match mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        });
    }
    builder
}

fn no_answer(config: &KafkaConfig) -> Error {
    Error::KafkaConnect {
        brokers: config.brokers_display(),
        reason: format!("no broker answered within {CONNECT_TIMEOUT:?}"),
    }
}

/// Whether a broker refused our SASL login or our client certificate: final, where a lost
/// connection is not.
pub fn is_auth_failure(error: &KafkaError) -> bool {
    refusal::kafka_refused(error)
}

/// A refusal as [`Error::KafkaAuth`]: what was refused and which settings to check.
fn refused(config: &KafkaConfig, error: &KafkaError) -> Error {
    let brokers = config.brokers_display();
    let (refused, check) = match (refusal(error), &config.security) {
        (
            Some(Refusal::Login),
            KafkaSecurity::SaslTls {
                mechanism,
                username,
                ..
            },
        ) => (
            format!("the SASL {mechanism} login of user {username}"),
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD".to_owned(),
        ),
        (
            Some(Refusal::Certificate(alert)),
            KafkaSecurity::Tls {
                client: Some(files),
                ..
            },
        ) => (
            format!("the client certificate (TLS alert {alert:?})"),
            format!(
                "that KAFKA_CERT_FILE {} is signed by a CA the broker trusts, is valid, and \
                 KAFKA_KEY_FILE is its key",
                files.cert_file.display()
            ),
        ),
        (Some(Refusal::Certificate(alert)), _) => (
            format!("the connection without a client certificate (TLS alert {alert:?})"),
            "KAFKA_CERT_FILE and KAFKA_KEY_FILE: the broker wants a client certificate".to_owned(),
        ),
        _ => (
            "the login".to_owned(),
            "the credentials of the Kafka settings".to_owned(),
        ),
    };
    Error::KafkaAuth {
        brokers,
        refused,
        check,
    }
}

/// The rustls configuration for a Kafka connection: our CA (or the public web roots), and our
/// client certificate when the broker wants one.
///
/// # Errors
/// [`Error::TlsFile`] naming the file and the problem.
pub fn tls_client_config(
    ca_file: Option<&Path>,
    client: Option<&ClientCertFiles>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs("KAFKA_CA_FILE", path)? {
                roots.add(cert).map_err(|e| Error::TlsFile {
                    setting: "KAFKA_CA_FILE",
                    path: path.to_owned(),
                    reason: format!("not a usable CA certificate ({e})"),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config {
        setting: "TLS",
        reason: e.to_string(),
    })?
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let certs = read_certs("KAFKA_CERT_FILE", &files.cert_file)?;
            let key = read_file("KAFKA_KEY_FILE", &files.key_file).and_then(|pem| {
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::TlsFile {
                    setting: "KAFKA_KEY_FILE",
                    path: files.key_file.clone(),
                    reason: format!("no PEM private key in it ({})", key_pem_problem(&e)),
                })
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::TlsFile {
                    setting: "KAFKA_KEY_FILE",
                    path: files.key_file.clone(),
                    reason: format!("the key does not fit the certificate ({e})"),
                })?
        }
    };
    Ok(Arc::new(config))
}

/// What is wrong with a key file, without any of its contents: the PEM parser's own errors
/// list the offending line's bytes, which may be key material.
fn key_pem_problem(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::NoItemsFound => "no PRIVATE KEY section",
        pem::Error::SectionTooLarge => "a section is larger than 256 MB",
        _ => "it does not parse as PEM",
    }
}

fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::TlsFile {
        setting,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn read_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::TlsFile {
            setting,
            path: path.to_owned(),
            reason: format!("not PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(Error::TlsFile {
            setting,
            path: path.to_owned(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// What [`create_topic`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicCreation {
    /// The topic is new.
    Created,
    /// The topic was there already; it was left as it was.
    AlreadyExists,
}

/// Creates a topic; a topic that exists already is not an error. Returns once the topic
/// shows in the cluster's metadata.
///
/// # Errors
/// [`Error::Kafka`] when the broker refuses (for example a replication factor larger than
/// the cluster), [`Error::Timeout`] after [`ADMIN_TIMEOUT`].
pub async fn create_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
) -> Result<TopicCreation> {
    // Asked first, so that the common case does not make rskafka log a failed request.
    if partition_count(client, topic).await?.is_some() {
        return Ok(TopicCreation::AlreadyExists);
    }
    let controller = client.controller_client().map_err(|source| Error::Kafka {
        operation: "create",
        topic: topic.to_owned(),
        source: Box::new(source),
    })?;
    let timeout_ms = i32::try_from(ADMIN_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    let create = controller.create_topic(topic, partitions, replication_factor, timeout_ms);
    let created = retry::timeout(&format!("creating topic {topic}"), ADMIN_TIMEOUT, async {
        Ok::<_, Error>(create.await)
    })
    .await?;
    let outcome = match created {
        Ok(()) => TopicCreation::Created,
        Err(KafkaError::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        }) => TopicCreation::AlreadyExists,
        Err(source) => {
            return Err(Error::Kafka {
                operation: "create",
                topic: topic.to_owned(),
                source: Box::new(source),
            });
        }
    };
    // CreateTopics returns once the controller has the topic (ours, or one created by
    // someone else a moment ago); the brokers' metadata may list it a moment later. Callers
    // (the sync starting right after `run` created the topic, say) must see it.
    retry::timeout(
        &format!("waiting for topic {topic} to show in the metadata"),
        ADMIN_TIMEOUT,
        async {
            while partition_count(client, topic).await?.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        },
    )
    .await?;
    Ok(outcome)
}

/// Deletes a topic and every event in it.
///
/// # Errors
/// [`Error::Kafka`] (an unknown topic among them), [`Error::Timeout`].
pub async fn delete_topic(client: &Client, topic: &str) -> Result<()> {
    let controller = client.controller_client().map_err(|source| Error::Kafka {
        operation: "delete",
        topic: topic.to_owned(),
        source: Box::new(source),
    })?;
    let timeout_ms = i32::try_from(ADMIN_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    let delete = async {
        controller
            .delete_topic(topic, timeout_ms)
            .await
            .map_err(|source| Error::Kafka {
                operation: "delete",
                topic: topic.to_owned(),
                source: Box::new(source),
            })
    };
    retry::timeout(&format!("deleting topic {topic}"), ADMIN_TIMEOUT, delete).await
}

/// The number of partitions of `topic`, or `None` when it does not exist.
///
/// # Errors
/// [`Error::Kafka`], [`Error::Timeout`].
pub async fn partition_count(client: &Client, topic: &str) -> Result<Option<usize>> {
    let list = async {
        client.list_topics().await.map_err(|source| Error::Kafka {
            operation: "describe",
            topic: topic.to_owned(),
            source: Box::new(source),
        })
    };
    let topics =
        retry::timeout(&format!("listing topics for {topic}"), ADMIN_TIMEOUT, list).await?;
    Ok(topics
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.len()))
}
