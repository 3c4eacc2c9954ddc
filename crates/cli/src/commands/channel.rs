//! `sitemon channel add|list|remove|test`: where alert notifications go.

use clap::{Args, Subcommand};
use serde::Serialize;
use sitemon_alert::ChannelSettings;
use sitemon_alert::admin;
use sitemon_alert::channel::Outcome;

use crate::args::DatabaseArgs;
use crate::output::Table;

/// `sitemon channel ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ChannelCommand {
    /// Add a channel: exactly one of --webhook, --slack, --pagerduty, --email.
    Add(AddArgs),
    /// List the channels (URLs, keys and passwords masked).
    List(ListArgs),
    /// Remove a channel (and the notifications it had not delivered).
    Remove(NameArgs),
    /// Send one test notification now and print what the receiver answered.
    Test(NameArgs),
}

/// Arguments of `sitemon channel add`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("kind").required(true).args(["webhook", "slack", "pagerduty", "email"]))]
pub(crate) struct AddArgs {
    /// The channel's name (letters, digits, `_`, `.`, `-`), used by `add-site --channels`.
    name: String,
    /// A generic webhook: the notification's JSON is POSTed to this URL (a secret).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// Sign webhook bodies with HMAC-SHA256 under this secret (header X-Sitemon-Signature).
    #[arg(
        long,
        value_name = "SECRET",
        requires = "webhook",
        env = "SITEMON_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// A Slack incoming webhook URL (a secret).
    #[arg(long, value_name = "URL")]
    slack: Option<String>,
    /// A PagerDuty Events API v2 routing key (a secret).
    #[arg(long, value_name = "ROUTING_KEY")]
    pagerduty: Option<String>,
    /// Where PagerDuty events go (default: PagerDuty's Events API v2).
    #[arg(long, value_name = "URL", requires = "pagerduty")]
    pagerduty_url: Option<String>,
    /// Email: the recipient's address.
    #[arg(long, value_name = "TO", requires = "smtp")]
    email: Option<String>,
    /// Email: smtps://USER:PASSWORD@HOST[:465] (implicit TLS),
    /// smtp://USER:PASSWORD@HOST:587?tls=required (STARTTLS) or smtp://HOST:PORT (plain, a
    /// local relay). The password is a secret.
    #[arg(
        long,
        value_name = "URL",
        requires = "email",
        env = "SITEMON_SMTP_URL",
        hide_env_values = true
    )]
    smtp: Option<String>,
    /// Email: the sender, e.g. "sitemon <alerts@example.com>".
    #[arg(long, value_name = "FROM", requires = "email")]
    from: Option<String>,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Arguments of `sitemon channel list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print a JSON array of `{name, kind, settings}` (settings masked) for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// A channel named on the command line.
#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// The channel's name.
    name: String,
    #[command(flatten)]
    db: DatabaseArgs,
}

#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    kind: &'static str,
    settings: String,
}

pub(crate) async fn exec(command: ChannelCommand) -> anyhow::Result<()> {
    match command {
        ChannelCommand::Add(args) => {
            // Validate everything before touching the database.
            admin::check_channel_name(&args.name)?;
            let settings = settings(&args)?;
            let pool = args.db.connect().await?;
            admin::add_channel(&pool, &args.name, &settings).await?;
            eprintln!(
                "added {} channel {}: {}",
                settings.kind(),
                args.name,
                settings.masked()
            );
        }
        ChannelCommand::List(args) => {
            let pool = args.db.connect().await?;
            let channels = admin::list_channels(&pool).await?;
            let listed: Vec<Listed> = channels
                .iter()
                .map(|c| Listed {
                    name: c.name.clone(),
                    kind: c.settings.kind(),
                    settings: c.settings.masked(),
                })
                .collect();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(());
            }
            let mut table = Table::new(["NAME", "KIND", "SETTINGS"]);
            for c in listed {
                table.row([c.name, c.kind.to_owned(), c.settings]);
            }
            print!("{table}");
        }
        ChannelCommand::Remove(args) => {
            let pool = args.db.connect().await?;
            admin::remove_channel(&pool, &args.name).await?;
            eprintln!("removed channel {}", args.name);
        }
        ChannelCommand::Test(args) => {
            let pool = args.db.connect().await?;
            match admin::test_channel(&pool, &args.name).await? {
                Outcome::Delivered { answer } => println!("delivered: {answer}"),
                Outcome::Retry { answer, .. } | Outcome::Rejected { answer } => {
                    anyhow::bail!(
                        "channel {} did not take the test notification: {answer}",
                        args.name
                    )
                }
            }
        }
    }
    Ok(())
}

fn settings(args: &AddArgs) -> sitemon_alert::Result<ChannelSettings> {
    let name = &args.name;
    if let Some(url) = &args.webhook {
        return ChannelSettings::webhook(name, url, args.secret.as_deref());
    }
    if let Some(url) = &args.slack {
        return ChannelSettings::slack(name, url);
    }
    if let Some(key) = &args.pagerduty {
        return ChannelSettings::pagerduty(name, key, args.pagerduty_url.as_deref());
    }
    match (&args.email, &args.smtp) {
        (Some(to), Some(smtp)) => ChannelSettings::email(name, to, smtp, args.from.as_deref()),
        // clap's group and `requires` make this unreachable; refuse rather than guess.
        _ => Err(sitemon_alert::Error::InvalidChannel {
            name: name.clone(),
            reason: "give one of --webhook, --slack, --pagerduty or --email with --smtp".to_owned(),
        }),
    }
}
