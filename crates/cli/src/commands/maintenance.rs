//! `sitemon maintenance add|list|remove`: windows during which no incident opens.

use clap::{Args, Subcommand};
use sitemon_alert::admin;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::args::{DatabaseArgs, InvalidValue, window};
use crate::output::Table;

/// `sitemon maintenance ...`
#[derive(Debug, Subcommand)]
pub(crate) enum MaintenanceCommand {
    /// Add a window: checks go on and are stored, but no incident opens in it.
    Add(AddArgs),
    /// List the windows.
    List(ListArgs),
    /// Remove a window.
    Remove(RemoveArgs),
}

/// Arguments of `sitemon maintenance add`.
#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The site it covers (default: every site).
    #[arg(long, value_name = "ID")]
    site: Option<i64>,
    /// Start: RFC 3339 (2026-12-01T02:00:00Z), `now`, or a duration from now (`+30m`).
    #[arg(long, value_parser = instant)]
    from: OffsetDateTime,
    /// End (excluded), in the same forms.
    #[arg(long, value_parser = instant)]
    until: OffsetDateTime,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Arguments of `sitemon maintenance list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print a JSON array of `{id, website_id, starts_at, ends_at}` for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Arguments of `sitemon maintenance remove`.
#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// The window's id (from `maintenance list`).
    id: i64,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// A point in time: RFC 3339, `now`, or `+DURATION` from now.
fn instant(text: &str) -> Result<OffsetDateTime, InvalidValue> {
    let text = text.trim();
    if text == "now" {
        return Ok(OffsetDateTime::now_utc());
    }
    if let Some(ahead) = text.strip_prefix('+') {
        return Ok(OffsetDateTime::now_utc() + window(ahead)?);
    }
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        let excerpt: String = text.chars().take(40).collect();
        InvalidValue(format!(
            "{excerpt:?} is not a time such as 2026-12-01T02:00:00Z, now or +30m"
        ))
    })
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

pub(crate) async fn exec(command: MaintenanceCommand) -> anyhow::Result<()> {
    match command {
        MaintenanceCommand::Add(args) => {
            if args.until <= args.from {
                anyhow::bail!("invalid --until: the window must end after it starts (--from)");
            }
            let pool = args.db.connect().await?;
            let id = admin::add_maintenance(&pool, args.site, args.from, args.until).await?;
            println!("{id}");
        }
        MaintenanceCommand::List(args) => {
            let pool = args.db.connect().await?;
            let windows = admin::list_maintenance(&pool).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&windows)?);
                return Ok(());
            }
            let mut table = Table::new(["ID", "SITE", "FROM", "UNTIL"]);
            for w in windows {
                table.row([
                    w.id.to_string(),
                    w.website_id
                        .map_or_else(|| "all".to_owned(), |s| s.to_string()),
                    rfc3339(w.starts_at),
                    rfc3339(w.ends_at),
                ]);
            }
            print!("{table}");
        }
        MaintenanceCommand::Remove(args) => {
            let pool = args.db.connect().await?;
            admin::remove_maintenance(&pool, args.id).await?;
            eprintln!("removed maintenance window {}", args.id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_in_three_forms() {
        assert_eq!(
            instant("2026-12-01T02:00:00Z").expect("rfc3339"),
            time::macros::datetime!(2026-12-01 02:00 UTC)
        );
        let ahead = instant("+30m").expect("relative") - OffsetDateTime::now_utc();
        assert!(ahead > time::Duration::minutes(29) && ahead <= time::Duration::minutes(30));
        assert!(instant("now").is_ok());
        let error = instant("tomorrow").expect_err("refused").0;
        assert!(error.contains("\"tomorrow\""), "{error}");
    }
}
