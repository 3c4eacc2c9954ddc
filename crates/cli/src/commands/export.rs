//! `sitemon export`: the registered sites as a sites file.

use clap::{Args, ValueEnum};
use sitemon_core::sites_file::{self, Format};

use crate::args::DatabaseArgs;

/// Arguments of `sitemon export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The format: YAML for people, JSON for scripts (`apply` reads both).
    #[arg(long, value_enum, default_value_t = ExportFormat::Yaml)]
    format: ExportFormat,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    Yaml,
    Json,
}

pub(crate) async fn exec(args: ExportArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    let sites = sitemon_core::db::list_sites(&pool).await?;
    let format = match args.format {
        ExportFormat::Yaml => Format::Yaml,
        ExportFormat::Json => Format::Json,
    };
    print!("{}", sites_file::render(&sites, format));
    Ok(())
}
