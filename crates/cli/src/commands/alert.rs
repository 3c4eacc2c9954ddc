//! `sitemon alert`: the alert service (state machines over the check events, incidents, the
//! outbox and its delivery) until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sitemon_alert::{AlertConfig, Policy};

use crate::args::{ServiceArgs, Start, reminder};

/// Arguments of `sitemon alert`.
#[derive(Debug, Args)]
pub(crate) struct AlertArgs {
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    options: AlertOptions,
}

/// The alert service's settings, shared by `sitemon alert` and `sitemon run`: the defaults of
/// every site without settings of its own (`add-site`/`update-site` flags of the same names).
#[derive(Debug, Args)]
#[command(next_help_heading = "Alerts")]
pub(crate) struct AlertOptions {
    /// Consecutive failed checks that take a location down.
    #[arg(long, env = "SITEMON_FAILURE_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    failure_threshold: u32,
    /// Consecutive successful checks that bring a location back up.
    #[arg(long, env = "SITEMON_SUCCESS_THRESHOLD", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    success_threshold: u32,
    /// Locations that must be down for an incident to open.
    #[arg(long, env = "SITEMON_MIN_LOCATIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    min_locations: u32,
    /// How often an open incident is notified again (1h, 30m; 0 = never).
    #[arg(long, env = "SITEMON_REMINDER_EVERY", default_value = "1h", value_parser = reminder)]
    reminder_every: Duration,
    /// Notify when a site's TLS certificate expires within this many days (0 = never).
    #[arg(long, env = "SITEMON_CERT_EXPIRY_DAYS", default_value_t = 14,
          value_parser = clap::value_parser!(u32).range(0..=3650))]
    cert_expiry_days: u32,
    /// Where the alert service starts reading a partition it has no offset for yet:
    /// `latest` (only checks from now on: a new service does not notify the outages already
    /// in the topic) or `earliest`. Once an offset is stored it always goes on from it.
    #[arg(long, env = "SITEMON_ALERT_START", value_enum, default_value_t = Start::Latest)]
    alert_start: Start,
    /// How long a notification being sent stays claimed by one worker (longer than any
    /// attempt takes): a worker killed while sending has it sent again, with the same id,
    /// once this has passed.
    #[arg(long, env = "SITEMON_DELIVERY_CLAIM_FOR", default_value = "2m", value_parser = crate::args::window)]
    delivery_claim_for: Duration,
}

impl AlertOptions {
    /// The alert service's configuration with these settings.
    pub(crate) fn config(
        &self,
        database: sitemon_core::DatabaseConfig,
        kafka: sitemon_core::KafkaConfig,
    ) -> AlertConfig {
        let mut config = AlertConfig::new(database, kafka);
        config.policy = Policy {
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
            min_locations: self.min_locations,
            reminder_every: self.reminder_every,
            cert_expiry_days: self.cert_expiry_days,
        };
        config.delivery.claim_for = self.delivery_claim_for;
        config.consumer.start = self.alert_start.into();
        config
    }
}

pub(crate) async fn exec(args: AlertArgs) -> anyhow::Result<()> {
    let config = args
        .options
        .config(args.services.db.config()?, args.services.kafka.config()?);
    let topic = config.consumer.kafka.topic.clone();
    let shutdown = crate::shutdown::on_signal();
    args.services
        .metrics
        .serve(config.metrics(), &shutdown)
        .await?;
    sitemon_alert::service::run(config, shutdown)
        .await
        .with_context(|| format!("alert service on topic {topic} failed to start"))
}
