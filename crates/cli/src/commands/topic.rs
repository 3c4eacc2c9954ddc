//! `sitemon topic create|delete`: the topic of the check events.

use clap::{Args, Subcommand};
use sitemon_core::kafka::{self, DEFAULT_PARTITIONS, TopicCreation};

use crate::args::KafkaArgs;

/// `sitemon topic ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create the topic; an existing topic is left as it is.
    Create(CreateArgs),
    /// Delete the topic and every event in it.
    Delete(DeleteArgs),
}

/// Arguments of `sitemon topic create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Partitions: the most sync workers that can share the topic.
    #[arg(long, default_value_t = DEFAULT_PARTITIONS, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: i32,
    /// Copies of each partition (Aiven: at least 2; a single local broker: 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i16).range(1..=32))]
    replication_factor: i16,
    #[command(flatten)]
    kafka: KafkaArgs,
}

/// Arguments of `sitemon topic delete`.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
}

pub(crate) async fn exec(command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create(args) => {
            let config = args.kafka.config()?;
            let client = kafka::connect(&config).await?;
            let outcome = kafka::create_topic(
                &client,
                &config.topic,
                args.partitions,
                args.replication_factor,
            )
            .await?;
            match outcome {
                TopicCreation::Created => eprintln!(
                    "created topic {} with {} partitions",
                    config.topic, args.partitions
                ),
                TopicCreation::AlreadyExists => {
                    eprintln!("topic {} exists already; left as it is", config.topic);
                }
            }
        }
        TopicCommand::Delete(args) => {
            let config = args.kafka.config()?;
            let client = kafka::connect(&config).await?;
            kafka::delete_topic(&client, &config.topic).await?;
            eprintln!("deleted topic {}", config.topic);
        }
    }
    Ok(())
}
