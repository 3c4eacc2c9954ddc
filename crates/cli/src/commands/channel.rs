//! `sitemon channel add|list|remove|test`: where alert notifications go.

use clap::{Args, Subcommand};
use serde::Serialize;
use sitemon_alert::ChannelSettings;
use sitemon_alert::admin;
use sitemon_alert::channel::Outcome;
use sitemon_core::Secret;

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
    #[arg(long, value_name = "URL", value_parser = secret)]
    webhook: Option<Secret>,
    /// Sign webhook bodies with HMAC-SHA256 under this secret (header X-Sitemon-Signature).
    #[arg(
        long,
        value_name = "SECRET",
        requires = "webhook",
        env = "SITEMON_WEBHOOK_SECRET",
        hide_env_values = true,
        value_parser = secret
    )]
    secret: Option<Secret>,
    /// A Slack incoming webhook URL (a secret).
    #[arg(long, value_name = "URL", value_parser = secret)]
    slack: Option<Secret>,
    /// A PagerDuty Events API v2 routing key (a secret).
    #[arg(long, value_name = "ROUTING_KEY", value_parser = secret)]
    pagerduty: Option<Secret>,
    /// Where PagerDuty events go (default: PagerDuty's Events API v2).
    #[arg(long, value_name = "URL", requires = "pagerduty")]
    pagerduty_url: Option<String>,
    /// Email: the recipient's address.
    #[arg(long, value_name = "TO", requires = "smtp")]
    email: Option<String>,
    /// Email: smtps://USER:PASSWORD@HOST[:465] (implicit TLS),
    /// smtp://USER:PASSWORD@HOST:587?tls=required (STARTTLS) or smtp://HOST:PORT (plain, a
    /// local relay, no login; `?tls=opportunistic` adds STARTTLS when offered). A login is
    /// refused without smtps:// or tls=required. The password is a secret.
    #[arg(
        long,
        value_name = "URL",
        requires = "email",
        env = "SITEMON_SMTP_URL",
        hide_env_values = true,
        value_parser = secret
    )]
    smtp: Option<Secret>,
    /// Email: the sender, e.g. "sitemon <alerts@example.com>".
    #[arg(long, value_name = "FROM", requires = "email")]
    from: Option<String>,
    /// Send site URLs whole (credentials and query values included) in this channel's
    /// notifications. Without it they are masked (`https://***@host/?token=***`).
    #[arg(long)]
    full_urls: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Arguments of `sitemon channel list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print a JSON array of `{name, kind, settings, full_urls}` (settings masked) for
    /// scripts.
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
    /// Whether its notifications carry site URLs whole (`--full-urls`).
    full_urls: bool,
}

pub(crate) async fn exec(command: ChannelCommand) -> anyhow::Result<()> {
    match command {
        ChannelCommand::Add(args) => {
            // Validate everything before touching the database.
            // A bad name or unusable settings (an SMTP login without TLS...) are a usage
            // error: exit 2.
            admin::check_channel_name(&args.name).map_err(crate::args::Usage::new)?;
            let settings = settings(&args).map_err(crate::args::Usage::new)?;
            let pool = args.db.connect().await?;
            let options = admin::ChannelOptions::full_urls(args.full_urls);
            admin::add_channel_with(&pool, &args.name, &settings, options).await?;
            eprintln!(
                "added {} channel {}: {}{}",
                settings.kind(),
                args.name,
                settings.masked(),
                if args.full_urls { " (full URLs)" } else { "" }
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
                    full_urls: c.options.full_urls,
                })
                .collect();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(());
            }
            let mut table = Table::new(["NAME", "KIND", "SETTINGS", "URLS"]);
            for c in listed {
                let urls = if c.full_urls { "full" } else { "masked" };
                table.row([c.name, c.kind.to_owned(), c.settings, urls.to_owned()]);
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

/// A secret flag's value: kept in a [`Secret`] so that `Debug` of the arguments shows none.
fn secret(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(text))
}

fn settings(args: &AddArgs) -> sitemon_alert::Result<ChannelSettings> {
    let name = &args.name;
    if let Some(url) = &args.webhook {
        return ChannelSettings::webhook(
            name,
            url.expose(),
            args.secret.as_ref().map(Secret::expose),
        );
    }
    if let Some(url) = &args.slack {
        return ChannelSettings::slack(name, url.expose());
    }
    if let Some(key) = &args.pagerduty {
        return ChannelSettings::pagerduty(name, key.expose(), args.pagerduty_url.as_deref());
    }
    match (&args.email, &args.smtp) {
        (Some(to), Some(smtp)) => {
            ChannelSettings::email(name, to, smtp.expose(), args.from.as_deref())
        }
        // clap's group and `requires` make this unreachable; refuse rather than guess.
        _ => Err(sitemon_alert::Error::InvalidChannel {
            name: name.clone(),
            reason: "give one of --webhook, --slack, --pagerduty or --email with --smtp".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    #[test]
    fn the_parsed_arguments_show_no_secret_in_debug() {
        let token = "Plugh0Secret0Token";
        let url = format!("https://hooks.example.com/{token}");
        let smtp = format!("smtps://me:{token}@smtp.example.com");
        let db = ["--database-url", "postgres://u@127.0.0.1/db"];
        let commands: [Vec<&str>; 4] = [
            vec!["add", "a", "--webhook", &url, "--secret", token],
            vec!["add", "b", "--slack", &url],
            vec!["add", "c", "--pagerduty", token],
            vec!["add", "d", "--email", "ops@example.com", "--smtp", &smtp],
        ];
        for command in commands {
            let mut args = vec!["sitemon", "channel"];
            args.extend(command);
            args.extend(db);
            let cli = Cli::try_parse_from(&args).expect("parses");
            let debug = format!("{cli:?}");
            assert!(!debug.contains(token), "{debug}");
        }
    }
}
