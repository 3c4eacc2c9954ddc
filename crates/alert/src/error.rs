//! The error type of `sitemon-alert`.

/// Everything that can go wrong in `sitemon-alert`.
///
/// Each message is one line that names the input that was wrong; it never contains a
/// channel's URL, routing key or SMTP password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A channel's settings cannot be used.
    #[error("channel {name:?}: {reason}")]
    InvalidChannel {
        /// The channel's name (cut to 64 characters).
        name: String,
        /// What is wrong, without the secret itself.
        reason: String,
    },

    /// A channel of this name exists already.
    #[error("a channel named {name:?} exists already (remove it first)")]
    DuplicateChannel {
        /// The name.
        name: String,
    },

    /// No channel has this name.
    #[error("no channel is named {name:?}")]
    UnknownChannel {
        /// The name.
        name: String,
    },

    /// An alert setting (a threshold, a window) that cannot be used.
    #[error("invalid {setting}: {reason}")]
    InvalidSetting {
        /// The setting (a flag name).
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// No site has this id.
    #[error("no site has id {id}")]
    UnknownSite {
        /// The id.
        id: i64,
    },

    /// No maintenance window has this id.
    #[error("no maintenance window has id {id}")]
    UnknownMaintenance {
        /// The id.
        id: i64,
    },

    /// A statement failed.
    #[error("PostgreSQL failed while {doing}: {reason}")]
    Database {
        /// What we were doing.
        doing: &'static str,
        /// The server's or the driver's message, on one line.
        reason: String,
        /// The driver's error.
        #[source]
        source: Box<sqlx::Error>,
    },

    /// An error of `sitemon-core` (connecting, a timeout, a site's validation).
    #[error(transparent)]
    Core(#[from] sitemon_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a driver error to [`Error::Database`] naming what we were `doing`.
pub(crate) fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| {
        let reason = match &source {
            sqlx::Error::Database(e) => e.message().to_owned(),
            other => other.to_string(),
        };
        Error::Database {
            doing,
            reason: sitemon_core::mask::bound_text(&reason, sitemon_core::mask::MAX_MESSAGE_BYTES)
                .into_owned(),
            source: Box::new(source),
        }
    }
}

/// How long one statement of this crate may take.
pub(crate) const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs one statement for at most [`STATEMENT_TIMEOUT`]: its error becomes
/// [`Error::Database`], its timeout core's `Timeout`, both naming what it was `doing`.
pub(crate) async fn bounded<T>(
    doing: &'static str,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, statement).await {
        Ok(result) => result.map_err(db(doing)),
        Err(_) => Err(Error::Core(
            <sitemon_core::Error as sitemon_core::retry::TimedOut>::timed_out(
                doing,
                STATEMENT_TIMEOUT,
            ),
        )),
    }
}
