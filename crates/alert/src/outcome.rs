//! What a receiver made of one notification: the channels' senders give it, the delivery
//! loop records it.

use std::time::Duration;

/// What a receiver made of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Delivered {
        /// What it answered (status and the start of the body).
        answer: String,
    },
    /// Not now (5xx, 429, 408, no connection, no answer): try again later.
    Retry {
        /// What it answered, or why there was no answer.
        answer: String,
        /// `Some` when the receiver throttles the channel (a 429, or any answer with a
        /// `Retry-After`): the wait it asked for (capped; zero when it named none). The
        /// delivery loop then holds every notification of the channel until that wait (or
        /// the back-off, if longer) has passed: throttling is the channel's state, not one
        /// notification's.
        retry_after: Option<Duration>,
    },
    /// Never (another 4xx, a refused address): trying again would not help.
    Rejected {
        /// What it answered.
        answer: String,
    },
}

impl Outcome {
    /// The receiver's answer.
    pub fn answer(&self) -> &str {
        match self {
            Self::Delivered { answer } | Self::Retry { answer, .. } | Self::Rejected { answer } => {
                answer
            }
        }
    }
}
