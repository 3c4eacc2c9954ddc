//! `sitemon apply`: make the registered sites what a sites file says.

use std::path::PathBuf;

use clap::Args;

use sitemon_core::sites_file::Variables;

use crate::args::{DatabaseArgs, Usage};

/// Arguments of `sitemon apply`.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// A YAML (or JSON) sites file, or a folder of them (`*.yaml`, `*.yml`, `*.json`).
    file: PathBuf,
    /// Also remove the registered sites the file does not have, with their history.
    #[arg(long)]
    prune: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Let `${NAME}` in the file read this environment variable too (repeatable; a comma
    /// list in the environment). Variables named `SITEMON_SITE_*` need no flag; sitemon's own
    /// settings (DATABASE_URL, KAFKA_*, PG*, other SITEMON_*) are refused.
    #[arg(
        long = "env",
        value_name = "NAME",
        env = "SITEMON_APPLY_ENV",
        value_delimiter = ','
    )]
    env: Vec<String>,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: ApplyArgs) -> anyhow::Result<()> {
    // The whole file is read and checked before the database is touched.
    let lookup = |name: &str| std::env::var(name).ok();
    let vars = Variables::new(args.env, &lookup).map_err(Usage::from)?;
    let entries = sitemon_core::sites_file::load(&args.file, &vars)?;
    let pool = args.db.connect().await?;
    let plan = sitemon_core::apply::apply(&pool, &entries, args.prune, args.dry_run).await?;
    print!("{plan}");
    let (added, changed, removed) = plan.counts();
    if plan.is_empty() {
        println!("nothing to change");
    } else if args.dry_run {
        println!(
            "dry run: {added} to add, {changed} to change, {removed} to remove; nothing written"
        );
    } else {
        println!("applied: {added} added, {changed} changed, {removed} removed");
    }
    Ok(())
}
