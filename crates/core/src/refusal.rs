//! Telling a refused login from a lost connection, in the drivers' own errors: a refusal is
//! final (a wrong password, a client certificate the broker does not trust), a lost
//! connection is retried. A leaf module: `error.rs`, `db.rs` and `kafka.rs` all ask it.

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rustls::AlertDescription;

/// Whether PostgreSQL refused the login: SQLSTATE class 28, "invalid authorization
/// specification" (28P01 a wrong password, 28000 an unknown user or no `pg_hba.conf` entry).
pub(crate) fn database_refused(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("28"))
}

/// The TLS alerts with which a broker refuses a client certificate (or the lack of one).
const CERTIFICATE_ALERTS: [AlertDescription; 8] = [
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::CertificateRequired,
];

/// What a broker refused, if it refused us.
///
/// rskafka keeps the cause of a failed connection only as text (its `MultiError` is
/// private), so this looks for the words the causes' own types write: rskafka's
/// `SaslAuthenticationFailed`, rustls's `received fatal alert: …`.
pub(crate) fn refusal(error: &KafkaError) -> Option<Refusal> {
    let text = error.to_string();
    if text.contains(&ProtocolError::SaslAuthenticationFailed.to_string()) {
        return Some(Refusal::Login);
    }
    CERTIFICATE_ALERTS
        .into_iter()
        .find(|alert| text.contains(&rustls::Error::AlertReceived(*alert).to_string()))
        .map(Refusal::Certificate)
}

/// What a broker refused.
pub(crate) enum Refusal {
    /// The SASL login.
    Login,
    /// The client certificate, with this TLS alert.
    Certificate(AlertDescription),
}

/// Whether a broker refused our SASL login or our client certificate: final, where a lost
/// connection is not.
pub(crate) fn kafka_refused(error: &KafkaError) -> bool {
    refusal(error).is_some()
}
