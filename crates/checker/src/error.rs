//! The error type of `sitemon-checker`.
//!
//! Only what stops the checker as a whole, at start, is an [`Error`]. A failed check is not
//! an error; it is a [`CheckEvent`](sitemon_core::CheckEvent) with `error` set. A site whose
//! settings cannot make a check plan is a `PlanError` (crate-private): its checks are events
//! with that error's kind and text.

use std::sync::Arc;

use sitemon_core::ErrorKind;

/// Everything that can stop [`run`](crate::run).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting of [`CheckerConfig`](crate::CheckerConfig) that cannot be used.
    #[error("invalid {setting}: {reason}")]
    Config {
        /// The setting, as the command line names it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Connecting to PostgreSQL or Kafka, or a request to either, failed.
    #[error(transparent)]
    Core(#[from] sitemon_core::Error),

    /// The topic is missing and the broker did not let us create it.
    #[error(
        "topic {topic} does not exist and could not be created ({reason}); \
         create it with `sitemon topic create` or ask the Kafka administrator"
    )]
    MissingTopic {
        /// The topic.
        topic: String,
        /// Why creating it failed.
        reason: String,
    },

    /// Listening for changes of the `websites` table failed at start.
    #[error("cannot listen for site changes on PostgreSQL at {target}: {reason}")]
    Listen {
        /// `host:port/database`.
        target: String,
        /// Why.
        reason: String,
    },

    /// The bucket leases could not be taken at start (see [`crate::buckets`]).
    #[error(
        "cannot share the sites with the other checkers of group {group} ({source}); the \
         leases need a direct PostgreSQL connection, not a transaction pooler"
    )]
    Lease {
        /// The lease group, `check:<topic>:<location>`.
        group: String,
        /// Why.
        source: sitemon_core::Error,
    },
}

impl sitemon_core::retry::TimedOut for Error {
    fn timed_out(operation: &str, after: std::time::Duration) -> Self {
        Self::Core(sitemon_core::Error::timed_out(operation, after))
    }
}

/// Why a site's settings cannot make a check plan (a row written by SQL: `add-site` and
/// `apply` refuse such values). Its text is the event's error message, word for word the
/// validation's own (`sitemon_core::site`); the validation's error is shared (`Arc`) because
/// one compiled-or-refused regex serves every site with the same pattern.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PlanError {
    /// The site URL cannot be checked: `invalid_url`.
    #[error("{source}")]
    Url {
        /// What `validate_url` refused.
        source: Arc<sitemon_core::Error>,
    },

    /// A regex does not compile: `invalid_regex`.
    #[error("{source}")]
    Regex {
        /// The setting: `regex` or `regex_must_not_match`.
        key: &'static str,
        /// What the compiler refused.
        source: Arc<sitemon_core::Error>,
    },

    /// Another setting cannot be used: `invalid_settings`.
    #[error("{source}")]
    Setting {
        /// The setting: `headers` or `expect_status`.
        key: &'static str,
        /// What its validation refused.
        source: Arc<sitemon_core::Error>,
    },
}

impl PlanError {
    /// The event's error kind for a check of a site without a plan.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Self::Url { .. } => ErrorKind::InvalidUrl,
            Self::Regex { .. } => ErrorKind::InvalidRegex,
            Self::Setting { .. } => ErrorKind::InvalidSettings,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources on one line, `outer: inner: innermost`, for check messages and
/// logs.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    sitemon_core::mask::bound_text(&out, sitemon_core::mask::MAX_MESSAGE_BYTES).into_owned()
}
