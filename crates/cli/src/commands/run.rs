//! `sitemon run`: the whole pipeline in one process. Migrates, makes sure the topic exists,
//! then runs the checker, the sync and the alert service side by side (still through Kafka)
//! until SIGINT/SIGTERM: the way to run sitemon small, and what `scripts/demo` uses. With
//! `--listen` it serves the dashboard too (as `sitemon serve`), with the other parts' metrics
//! on its `/metrics`.

use anyhow::Context as _;
use clap::Args;
use sitemon_core::kafka::{self, TopicCreation};
use sitemon_core::metrics::Registry;

use super::alert::AlertOptions;
use super::check::CheckOptions;
use super::serve::WebOptions;
use super::sync::SyncOptions;
use crate::args::ServiceArgs;

/// Arguments of `sitemon run`: those of `check`, `sync` and `alert` together.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    check: CheckOptions,
    #[command(flatten)]
    sync: SyncOptions,
    #[command(flatten)]
    alert: AlertOptions,
    /// Run without the alert service (checks are still stored).
    #[arg(long, env = "SITEMON_NO_ALERTS")]
    no_alerts: bool,
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
    let mut alert = args.alert.config(database.clone(), kafka_config.clone());
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
    sync.consumer.metrics = registry.clone();
    alert.consumer.metrics = registry.clone();
    args.services.metrics.serve(&registry, &shutdown).await?;

    let mut services = tokio::task::JoinSet::new();
    services.spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = sitemon_checker::run(checker, shutdown).await;
            ("the checker", result.map_err(anyhow::Error::from))
        }
    });
    services.spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = sitemon_sync::run(sync, shutdown).await;
            ("the sync", result.map_err(anyhow::Error::from))
        }
    });
    if !args.no_alerts {
        services.spawn({
            let shutdown = shutdown.clone();
            async move {
                let result = sitemon_alert::service::run(alert, shutdown).await;
                ("the alert service", result.map_err(anyhow::Error::from))
            }
        });
    }
    if let Some(server) = dashboard {
        services.spawn(async move {
            let result = match server.await {
                Ok(served) => served.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::Error::from(e).context("panicked")),
            };
            ("the dashboard", result)
        });
    }
    // All run until the stop signal. If one fails to start, the others are stopped too; the
    // first failure is the one reported.
    let mut failure = None;
    while let Some(ended) = services.join_next().await {
        let (name, result) = ended.context("a service panicked")?;
        if let Err(e) = result {
            shutdown.cancel();
            failure.get_or_insert(e.context(format!("{name} stopped")));
        }
    }
    failure.map_or(Ok(()), Err)
}
