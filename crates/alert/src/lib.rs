//! sitemon's alerting: tells people when a site goes down and comes back, exactly once per
//! change, over webhooks, Slack, PagerDuty and email.
//!
//! Alerting is one more consumer of the check events ([`service::run`], `sitemon alert`): the
//! exactly-once consumer of [`sitemon_consume`], the sync's machinery under a name of its
//! own, opens a transaction, hands the events it read to [`Processor::apply`], stores its
//! offsets in the same transaction and commits: every state change, incident and notification to send is
//! written with the offsets (a transactional outbox), so a crash neither loses nor repeats
//! one. The delivery loop ([`delivery::run`]) reads the outbox from PostgreSQL alone and
//! sends each notification at least once, with a stable id receivers de-duplicate by.
//!
//! # Layout
//! - [`machine`]: the state machine as pure code: per location up/down with thresholds, per
//!   site incidents over `min_locations`, maintenance, reminders, certificate expiry.
//! - [`processor`]: [`Processor::apply`]: events → state, incidents and outbox rows, inside
//!   the caller's transaction.
//! - [`notification`]: the [`Notification`] each outbox row holds, and its stable id.
//! - [`channel`]: the channels ([`ChannelSettings`]): webhook, Slack, PagerDuty, email;
//!   their validation, masking and sending.
//! - [`delivery`]: the delivery loop: each channel on its own task, one request at a time;
//!   claims due rows, sends, records each attempt, backs off with jitter, honours
//!   `Retry-After` (capped at the give-up time; a 429 throttles the channel), gives up
//!   after 24 h.
//! - [`service`]: [`service::run`]: the processor inside the exactly-once consumer, and the
//!   delivery loop beside it.
//! - [`admin`]: what the CLI does: channels, maintenance windows, per-site settings, the
//!   list of incidents.
//! - [`error`]: this crate's [`Error`].
//!
//! # Example
//! Wiring the processor into a consumer, and running the delivery loop beside it:
//! ```no_run
//! use sitemon_alert::{Policy, Processor, delivery};
//! use sitemon_core::{CheckEvent, db::PgPool};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example(pool: PgPool, events: Vec<CheckEvent>) -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = CancellationToken::new();
//! let sender = tokio::spawn(delivery::run(pool.clone(), delivery::DeliveryConfig::default(), shutdown.clone()));
//! let processor = Processor::new(Policy::default());
//! let mut tx = pool.begin().await?;
//! processor.apply(&mut tx, &events).await?;
//! // ... store the consumer's offsets in `tx` here ...
//! tx.commit().await?;
//! shutdown.cancel();
//! sender.await??;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod channel;
pub mod delivery;
pub mod error;
mod http;
pub mod machine;
pub mod notification;
mod outcome;
pub mod processor;
pub mod service;

pub use channel::ChannelSettings;
pub use error::{Error, Result};
pub use machine::{Overrides, Policy};
pub use notification::{Kind, Notification};
pub use processor::{Applied, Processor};
pub use service::{AlertConfig, ServiceError};
