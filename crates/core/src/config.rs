//! Connection settings for Kafka and PostgreSQL, validated before any I/O.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use crate::error::{Error, Result};

/// The topic the original prototype used, and sitemon's default.
pub const DEFAULT_TOPIC: &str = "website_status";

/// Where the check events go, and how to reach it.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers as `host:port`.
    pub brokers: Vec<String>,
    /// The topic of the check events.
    pub topic: String,
    /// Plaintext, TLS (optionally with a client certificate), or SASL over TLS.
    pub security: KafkaSecurity,
}

/// How a Kafka connection is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaSecurity {
    /// No TLS, no authentication: a local broker.
    Plaintext,
    /// TLS; with `client` set the broker authenticates us by certificate (Aiven's default).
    Tls {
        /// The CA that signed the broker's certificate; `None` trusts the public web roots.
        ca_file: Option<PathBuf>,
        /// Our certificate and key, for brokers that require client authentication.
        client: Option<ClientCertFiles>,
    },
    /// SASL over TLS.
    SaslTls {
        /// The CA that signed the broker's certificate; `None` trusts the public web roots.
        ca_file: Option<PathBuf>,
        /// The SASL mechanism.
        mechanism: SaslMechanism,
        /// The SASL user.
        username: String,
        /// The SASL password.
        password: Secret,
    },
}

/// A client certificate and its key, as PEM files (Aiven's `service.cert` and `service.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    /// The certificate (chain), PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The SASL mechanisms sitemon speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN`
    Plain,
    /// `SCRAM-SHA-256`
    ScramSha256,
    /// `SCRAM-SHA-512`
    ScramSha512,
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        })
    }
}

impl FromStr for SaslMechanism {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err(Error::Config {
                setting: "KAFKA_SASL_MECHANISM",
                reason: format!("{s:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
            }),
        }
    }
}

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The Kafka settings as a user gives them (flags or environment), before validation.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// `KAFKA_BROKERS`: comma-separated `host:port`.
    pub brokers: String,
    /// `KAFKA_TOPIC`.
    pub topic: String,
    /// `KAFKA_CA_FILE`.
    pub ca_file: Option<PathBuf>,
    /// `KAFKA_CERT_FILE`.
    pub cert_file: Option<PathBuf>,
    /// `KAFKA_KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// `KAFKA_SASL_MECHANISM`.
    pub sasl_mechanism: Option<String>,
    /// `KAFKA_SASL_USERNAME`.
    pub sasl_username: Option<String>,
    /// `KAFKA_SASL_PASSWORD`.
    pub sasl_password: Option<Secret>,
}

impl KafkaConfig {
    /// A plaintext configuration, as for a local broker.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty broker list or an illegal topic name.
    pub fn plaintext(brokers: &str, topic: &str) -> Result<Self> {
        Self::new(KafkaSettings {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            ..KafkaSettings::default()
        })
    }

    /// Validates the settings: brokers, topic name, and a coherent choice of security.
    /// Files are only named here; they are read when connecting.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting and the problem.
    pub fn new(settings: KafkaSettings) -> Result<Self> {
        let brokers = parse_brokers(&settings.brokers)?;
        validate_topic(&settings.topic)?;
        let client = match (settings.cert_file, settings.key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientCertFiles {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) => return Err(missing("KAFKA_KEY_FILE", "KAFKA_CERT_FILE is set")),
            (None, Some(_)) => return Err(missing("KAFKA_CERT_FILE", "KAFKA_KEY_FILE is set")),
        };
        let security = match settings.sasl_mechanism.filter(|m| !m.is_empty()) {
            Some(mechanism) => {
                if client.is_some() {
                    return Err(Error::Config {
                        setting: "KAFKA_SASL_MECHANISM",
                        reason: "choose SASL or a client certificate (KAFKA_CERT_FILE), not both"
                            .into(),
                    });
                }
                let mechanism = mechanism.parse()?;
                let username = settings
                    .sasl_username
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| missing("KAFKA_SASL_USERNAME", "KAFKA_SASL_MECHANISM is set"))?;
                let password = settings
                    .sasl_password
                    .ok_or_else(|| missing("KAFKA_SASL_PASSWORD", "KAFKA_SASL_MECHANISM is set"))?;
                KafkaSecurity::SaslTls {
                    ca_file: settings.ca_file,
                    mechanism,
                    username,
                    password,
                }
            }
            None if settings.sasl_username.is_some() || settings.sasl_password.is_some() => {
                return Err(missing(
                    "KAFKA_SASL_MECHANISM",
                    "a SASL user or password is set",
                ));
            }
            None if client.is_some() || settings.ca_file.is_some() => KafkaSecurity::Tls {
                ca_file: settings.ca_file,
                client,
            },
            None => KafkaSecurity::Plaintext,
        };
        Ok(Self {
            brokers,
            topic: settings.topic,
            security,
        })
    }

    /// The brokers as a user wrote them, for messages.
    pub fn brokers_display(&self) -> String {
        self.brokers.join(",")
    }
}

fn missing(setting: &'static str, because: &str) -> Error {
    Error::Config {
        setting,
        reason: format!("it is required because {because}"),
    }
}

fn parse_brokers(brokers: &str) -> Result<Vec<String>> {
    let list: Vec<String> = brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err(Error::Config {
            setting: "KAFKA_BROKERS",
            reason: "no broker given; set it to host:port[,host:port...]".into(),
        });
    }
    for broker in &list {
        let port_ok = broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(Error::Config {
                setting: "KAFKA_BROKERS",
                reason: format!("{broker:?} is not host:port"),
            });
        }
    }
    Ok(list)
}

/// Checks a topic name against Kafka's rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// [`Error::Config`] for `KAFKA_TOPIC`.
pub fn validate_topic(topic: &str) -> Result<()> {
    let legal = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if legal {
        Ok(())
    } else {
        Err(Error::Config {
            setting: "KAFKA_TOPIC",
            reason: format!(
                "{:?} is not a legal topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
                crate::error::excerpt(topic)
            ),
        })
    }
}

/// Where the database is, parsed from a `postgres://` URL.
///
/// `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert`
/// in the URL are honoured. Its `Debug` shows the target and the user, never the password
/// (sqlx's `PgConnectOptions` would print it).
#[derive(Clone)]
pub struct DatabaseConfig {
    options: PgConnectOptions,
    target: String,
}

impl DatabaseConfig {
    /// Parses a `DATABASE_URL`.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse; the message never repeats the URL,
    /// which may hold a password.
    pub fn from_url(url: &str) -> Result<Self> {
        if url.is_empty() {
            return Err(Error::Config {
                setting: "DATABASE_URL",
                reason: "it is empty; set it to postgres://user:password@host:port/database".into(),
            });
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| Error::Config {
            setting: "DATABASE_URL",
            reason: format!(
                "it does not parse as postgres://user:password@host:port/database ({e})"
            ),
        })?;
        Ok(Self::from_options(options))
    }

    /// Wraps options built in code.
    pub fn from_options(options: PgConnectOptions) -> Self {
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        );
        Self { options, target }
    }

    /// `host:port/database`, safe to print.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The driver's options.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("target", &self.target)
            .field("user", &self.options.get_username())
            .field("ssl_mode", &self.options.get_ssl_mode())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(brokers: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.into(),
            topic: DEFAULT_TOPIC.into(),
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn plaintext_by_default() {
        let config = KafkaConfig::new(settings("a:9092, b:9093")).expect("valid");
        assert_eq!(config.brokers, ["a:9092", "b:9093"]);
        assert_eq!(config.security, KafkaSecurity::Plaintext);
    }

    #[test]
    fn brokers_need_host_and_port() {
        for bad in ["", " , ", "localhost", "host:port", ":9092"] {
            let message = KafkaConfig::new(settings(bad)).expect_err(bad).to_string();
            assert!(message.starts_with("invalid KAFKA_BROKERS"), "{message}");
        }
    }

    #[test]
    fn certificate_and_key_go_together() {
        let mut s = settings("a:1");
        s.cert_file = Some("service.cert".into());
        let message = KafkaConfig::new(s).expect_err("no key").to_string();
        assert!(message.contains("KAFKA_KEY_FILE"), "{message}");
    }

    #[test]
    fn mtls_and_sasl() {
        let mut s = settings("a:1");
        s.ca_file = Some("ca.pem".into());
        s.cert_file = Some("service.cert".into());
        s.key_file = Some("service.key".into());
        assert!(matches!(
            KafkaConfig::new(s.clone()).expect("valid").security,
            KafkaSecurity::Tls {
                client: Some(_),
                ..
            }
        ));
        s.sasl_mechanism = Some("scram-sha-512".into());
        assert!(
            KafkaConfig::new(s.clone()).is_err(),
            "SASL and certificate both"
        );
        s.cert_file = None;
        s.key_file = None;
        assert!(KafkaConfig::new(s.clone()).is_err(), "SASL without user");
        s.sasl_username = Some("avnadmin".into());
        s.sasl_password = Some(Secret::new("hunter2"));
        let config = KafkaConfig::new(s).expect("valid");
        assert!(matches!(
            config.security,
            KafkaSecurity::SaslTls {
                mechanism: SaslMechanism::ScramSha512,
                ..
            }
        ));
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    /// A SASL password unlike any other word in the configuration, so that finding it in
    /// a `Debug` output can only mean the password was printed.
    const SASL_PASSWORD: &str = "s3cret-sasl-41c7";

    fn sasl_settings() -> KafkaSettings {
        KafkaSettings {
            ca_file: Some("ca.pem".into()),
            sasl_mechanism: Some("SCRAM-SHA-256".into()),
            sasl_username: Some("avnadmin".into()),
            sasl_password: Some(Secret::new(SASL_PASSWORD)),
            ..settings("a:1")
        }
    }

    #[test]
    fn secret_debug_prints_nothing_of_the_secret() {
        let debug = format!("{:?}", Secret::new(SASL_PASSWORD));
        assert!(!debug.contains(SASL_PASSWORD), "{debug}");
        assert!(!debug.contains("41c7"), "{debug}");
        let pretty = format!("{:#?}", Secret::new(SASL_PASSWORD));
        assert!(!pretty.contains(SASL_PASSWORD), "{pretty}");
    }

    #[test]
    fn kafka_settings_debug_hides_the_sasl_password() {
        let settings = sasl_settings();
        for debug in [format!("{settings:?}"), format!("{settings:#?}")] {
            assert!(!debug.contains(SASL_PASSWORD), "{debug}");
            assert!(debug.contains("avnadmin"), "{debug}");
        }
    }

    #[test]
    fn kafka_config_debug_hides_the_sasl_password() {
        let config = KafkaConfig::new(sasl_settings()).expect("valid SASL settings");
        assert!(matches!(config.security, KafkaSecurity::SaslTls { .. }));
        for debug in [format!("{config:?}"), format!("{config:#?}")] {
            assert!(!debug.contains(SASL_PASSWORD), "{debug}");
            assert!(debug.contains("avnadmin"), "{debug}");
        }
    }

    #[test]
    fn topic_names_follow_kafka() {
        assert!(validate_topic("website_status").is_ok());
        assert!(validate_topic("a.b-c_D9").is_ok());
        for bad in ["", ".", "..", "has space", "slash/", &"x".repeat(250)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_target_hides_the_password() {
        let config =
            DatabaseConfig::from_url("postgres://u:secret@db.example:6543/app?sslmode=require")
                .expect("valid");
        assert_eq!(config.target(), "db.example:6543/app");
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(
            debug.contains("db.example:6543/app") && debug.contains("\"u\""),
            "{debug}"
        );
        assert!(DatabaseConfig::from_url("").is_err());
        let message = DatabaseConfig::from_url("postgres://u:pw@h:notaport/db")
            .expect_err("bad port")
            .to_string();
        assert!(!message.contains("pw"), "{message}");
    }
}
