//! `sitemon sync`: run the sync until SIGINT/SIGTERM.

use clap::Args;

use crate::cli::{DatabaseArgs, KafkaArgs};

/// Arguments of `sitemon sync`.
#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
}

pub(crate) async fn exec(args: SyncArgs) -> anyhow::Result<()> {
    let _ = (args.db.config()?, args.kafka.config()?);
    let _shutdown = crate::shutdown::on_signal();
    anyhow::bail!("sitemon sync is not implemented yet")
}
