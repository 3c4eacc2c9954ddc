//! `sitemon check`: run the checker until SIGINT/SIGTERM.

use clap::Args;

use crate::cli::{DatabaseArgs, KafkaArgs};

/// Arguments of `sitemon check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
}

pub(crate) async fn exec(args: CheckArgs) -> anyhow::Result<()> {
    let _ = (args.db.config()?, args.kafka.config()?);
    let _shutdown = crate::shutdown::on_signal();
    anyhow::bail!("sitemon check is not implemented yet")
}
