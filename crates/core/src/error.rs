//! The error type of `sitemon-core`.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in `sitemon-core`.
///
/// Each message is one line that names the input that was wrong and never contains a
/// password or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A site URL that cannot be checked.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, masked ([`crate::mask::mask_url`]) and cut to 200 characters.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A check interval outside 1..=86400 seconds.
    #[error("invalid interval {value}: it must be a whole number of seconds from 1 to 86400")]
    InvalidInterval {
        /// The interval as given.
        value: i64,
    },

    /// A regex that does not compile.
    #[error("invalid regex {pattern:?}: {reason}")]
    InvalidRegex {
        /// The pattern as given (cut to 200 characters).
        pattern: String,
        /// The compiler's complaint, on one line.
        reason: String,
    },

    /// The URL is registered already.
    #[error("{url} is already registered as site {existing_id}")]
    DuplicateUrl {
        /// The URL that was given, masked ([`crate::mask::mask_url`]).
        url: String,
        /// The id of the site that has it.
        existing_id: i32,
    },

    /// A per-site setting (method, headers, expected status...) that cannot be used.
    #[error("invalid {key} {value}: {reason}")]
    InvalidSetting {
        /// The setting's key, as in a sites file (`expect_status`, `headers`...).
        key: &'static str,
        /// The value as given, quoted and cut to 200 characters.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The name is another site's already.
    #[error("the name {name:?} is already site {existing_id}'s")]
    DuplicateName {
        /// The name that was given.
        name: String,
        /// The id of the site that has it.
        existing_id: i32,
    },

    /// A sites file that cannot be applied: where, and why.
    #[error("{path}:{line}:{column}: {reason}")]
    SitesFile {
        /// The file.
        path: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// What is wrong there.
        reason: String,
    },

    /// A sites file or folder that cannot be read.
    #[error("cannot read {path}: {reason}")]
    SitesPath {
        /// The file or folder.
        path: String,
        /// Why.
        reason: String,
    },

    /// No site has this id.
    #[error("no site has id {id}")]
    UnknownSite {
        /// The id that was given.
        id: i64,
    },

    /// A configuration value that cannot be used.
    #[error("invalid {setting}: {reason}")]
    Config {
        /// The setting (an environment variable or flag name).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A TLS file that is missing, unreadable or holds no usable PEM.
    #[error("cannot use {setting} file {path}: {reason}")]
    TlsFile {
        /// Which setting named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// PostgreSQL could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    DatabaseConnect {
        /// `host:port/database`, never the password.
        target: String,
        /// Why.
        reason: String,
    },

    /// PostgreSQL refused the login (SQLSTATE class 28: a wrong password, an unknown user, no
    /// `pg_hba.conf` entry). Final: retrying cannot help until the configuration changes, so
    /// it is reported at once ([`Error::is_auth_failure`]).
    #[error(
        "cannot connect to PostgreSQL at {target}: the server refused the login ({reason}); \
         check the user and password in DATABASE_URL"
    )]
    DatabaseAuth {
        /// `host:port/database`, never the password.
        target: String,
        /// The server's words (they name the user, never the password).
        reason: String,
    },

    /// A statement failed.
    #[error("PostgreSQL failed while {doing}: {source}")]
    Database {
        /// What we were doing, e.g. "listing sites".
        doing: &'static str,
        /// The driver's error.
        #[source]
        source: Box<sqlx::Error>,
    },

    /// Applying the embedded migrations failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[source] Box<sqlx::migrate::MigrateError>),

    /// No Kafka broker answered.
    #[error("cannot connect to Kafka at {brokers}: {reason}")]
    KafkaConnect {
        /// The bootstrap brokers, comma-separated.
        brokers: String,
        /// Why.
        reason: String,
    },

    /// A broker refused our SASL login or our client certificate. Final: retrying cannot
    /// help until the configuration changes, so it is reported at once
    /// ([`Error::is_auth_failure`]).
    #[error("cannot connect to Kafka at {brokers}: the broker refused {refused}; check {check}")]
    KafkaAuth {
        /// The bootstrap brokers, comma-separated.
        brokers: String,
        /// What was refused, e.g. "the SASL PLAIN login of user sitemon".
        refused: String,
        /// The settings to check (names and paths, never their secret contents).
        check: String,
    },

    /// A Kafka request failed.
    #[error("Kafka failed to {operation} topic {topic}: {source}")]
    Kafka {
        /// What we asked, e.g. "create".
        operation: &'static str,
        /// The topic.
        topic: String,
        /// rskafka's error.
        #[source]
        source: Box<rskafka::client::error::Error>,
    },

    /// A network call took longer than its deadline.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out, with its target.
        operation: String,
        /// The deadline.
        after: Duration,
    },
}

impl Error {
    /// Whether PostgreSQL or Kafka refused our credentials: a wrong password, a client
    /// certificate the broker does not trust. Such a failure is final; a service that meets
    /// it while running retries only on a slow backoff.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Self::DatabaseAuth { .. } | Self::KafkaAuth { .. } => true,
            Self::Database { source, .. } => crate::refusal::database_refused(source),
            Self::Kafka { source, .. } => crate::refusal::kafka_refused(source),
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Cuts user input for an error message, so one absurd argument cannot flood a terminal.
pub(crate) fn excerpt(input: &str) -> String {
    const MAX: usize = 200;
    match input.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}

/// Folds a multi-line message (regex errors draw carets) into one line, bounded to
/// [`crate::mask::MAX_MESSAGE_BYTES`].
pub(crate) fn one_line(message: &str) -> String {
    crate::mask::bound_text(message, crate::mask::MAX_MESSAGE_BYTES).into_owned()
}
