//! `sitemon run`: the whole pipeline in one process. Migrates, makes sure the topic exists,
//! then runs the checker and the sync side by side (still through Kafka) until
//! SIGINT/SIGTERM: the way to run sitemon small, and what `scripts/demo` uses. With
//! `--listen` it serves the dashboard too (as `sitemon serve`), with the checker's and the
//! sync's metrics on its `/metrics`.

use anyhow::Context as _;
use clap::Args;
use sitemon_core::kafka::{self, TopicCreation};
use sitemon_core::metrics::Registry;

use super::check::CheckOptions;
use super::serve::WebOptions;
use super::sync::SyncOptions;
use crate::args::ServiceArgs;

/// Arguments of `sitemon run`: those of `check` and of `sync` together.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    check: CheckOptions,
    #[command(flatten)]
    sync: SyncOptions,
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    web: WebOptions,
}

pub(crate) async fn exec(args: RunArgs) -> anyhow::Result<()> {
    let database = args.services.db.config()?;
    let kafka_config = args.services.kafka.config()?;
    let mut checker = args.check.config(database.clone(), kafka_config.clone())?;
    let mut sync = args.sync.config(database.clone(), kafka_config.clone());
    let registry = Registry::new();
    let web = match args.web.listen {
        Some(listen) => Some(args.web.config(listen, registry.clone())?),
        None => None,
    };

    let pool = args.services.db.connect().await?;
    sitemon_core::db::migrate(&pool).await?;
    pool.close().await;

    // The sync needs the topic before it starts; the checker would create it too, but
    // which of the two gets there first is a race.
    let client = kafka::connect(&kafka_config).await?;
    let topic = &kafka_config.topic;
    match kafka::create_topic(
        &client,
        topic,
        checker.partitions,
        checker.replication_factor,
    )
    .await
    .with_context(|| format!("topic {topic} is missing and cannot be created"))?
    {
        TopicCreation::Created => tracing::info!(
            topic = %topic,
            partitions = checker.partitions,
            "created the topic"
        ),
        TopicCreation::AlreadyExists => {}
    }
    drop(client);

    let shutdown = crate::shutdown::on_signal();
    let dashboard = match web {
        Some(config) => {
            let pool = sitemon_web::connect(&database, &config).await?;
            let (_, server) = sitemon_web::start(config, pool, shutdown.clone()).await?;
            Some(server)
        }
        None => None,
    };
    checker.metrics = registry.clone();
    sync.metrics = registry.clone();
    args.services.metrics.serve(&registry, &shutdown).await?;

    let mut checking = tokio::spawn(sitemon_checker::run(checker, shutdown.clone()));
    let mut syncing = tokio::spawn(sitemon_sync::run(sync, shutdown.clone()));
    // Both run until the stop signal. If one fails to start, the other is stopped too.
    let (checked, synced) = tokio::select! {
        checked = &mut checking => {
            if !matches!(checked, Ok(Ok(()))) {
                shutdown.cancel();
            }
            (checked, syncing.await)
        }
        synced = &mut syncing => {
            if !matches!(synced, Ok(Ok(()))) {
                shutdown.cancel();
            }
            (checking.await, synced)
        }
    };
    checked
        .context("the checker panicked")?
        .context("the checker stopped")?;
    synced
        .context("the sync panicked")?
        .context("the sync stopped")?;
    if let Some(server) = dashboard {
        // The checker and the sync stopped: so does the dashboard.
        shutdown.cancel();
        server
            .await
            .context("the dashboard panicked")?
            .context("the dashboard stopped")?;
    }
    Ok(())
}
