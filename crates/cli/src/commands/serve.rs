//! `sitemon serve`: the dashboard, the JSON API and the badges (`sitemon-web`), read-only
//! against PostgreSQL. `sitemon run --listen` serves the same beside the checker and the
//! sync.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sitemon_core::Secret;
use sitemon_core::metrics::Registry;
use sitemon_web::WebConfig;

use crate::args::{DatabaseArgs, Usage, period};

/// The dashboard's settings, shared by `serve` and `run`.
#[derive(Debug, Args)]
pub(crate) struct WebOptions {
    /// Where the dashboard listens, e.g. 127.0.0.1:8080 or 0.0.0.0:8080 (which needs a
    /// token or --public). `serve`: 127.0.0.1:8080 when not given; `run`: no dashboard.
    #[arg(long, env = "SITEMON_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// The token every page and API call needs (a bearer header, or the login form's
    /// cookie). Prefer the environment variable or --token-file to the command line.
    #[arg(long = "ui-token", env = "SITEMON_UI_TOKEN", hide_env_values = true)]
    ui_token: Option<String>,
    /// A file holding the token (its first line).
    #[arg(long, env = "SITEMON_UI_TOKEN_FILE", conflicts_with = "ui_token")]
    token_file: Option<PathBuf>,
    /// Serve without a token on an address other than loopback.
    #[arg(long)]
    public: bool,
    /// Badges need no token even when one is set (to show them in a README).
    #[arg(long)]
    public_badges: bool,
    /// Show site URLs whole: credentials and query values, masked by default, included.
    #[arg(long)]
    show_full_urls: bool,
    /// The longest one database statement may run; a slower one gives a 503 (100ms to 10m).
    #[arg(long, env = "SITEMON_QUERY_TIMEOUT", default_value = "10s", value_parser = period)]
    query_timeout: Duration,
    /// The longest a request's head, and apart its body, may take to arrive, and the
    /// longest an idle keep-alive connection stays open (100ms to 10m).
    #[arg(long, env = "SITEMON_READ_TIMEOUT", default_value = "10s", value_parser = period)]
    read_timeout: Duration,
    /// How many dashboard connections are served at once; more are answered 503 and
    /// closed at once, so the process keeps file descriptors for its checks (1 to 65536;
    /// lowered to half the open-file limit if above it).
    #[arg(long, env = "SITEMON_MAX_CONNECTIONS", default_value_t = sitemon_web::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// A `Host` name (no port) answered besides loopback ones when there is no token, e.g.
    /// a reverse proxy's; repeat it or separate names with commas.
    #[arg(
        long = "allowed-host",
        env = "SITEMON_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
}

impl WebOptions {
    /// The server's configuration, validated: an unusable setting is a [`Usage`] error.
    pub(crate) fn config(
        &self,
        listen: SocketAddr,
        metrics: Registry,
    ) -> anyhow::Result<WebConfig> {
        let token = match (&self.ui_token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Usage::new(format!(
                        "invalid --token-file: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            (None, None) => None,
        };
        let config = WebConfig {
            listen,
            token: token.map(Secret::new),
            public: self.public,
            public_badges: self.public_badges,
            show_full_urls: self.show_full_urls,
            query_timeout: self.query_timeout,
            read_timeout: self.read_timeout,
            max_connections: capped(self.max_connections, crate::nofile::current()),
            allowed_hosts: self
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
            metrics,
        };
        config.validate().map_err(Usage::new)?;
        Ok(config)
    }
}

/// `max_connections`, at most half the open-file limit `nofile`: the rest stays for the
/// checks, the brokers and the database.
fn capped(max_connections: usize, nofile: Option<u64>) -> usize {
    let Some(half) = nofile.map(|n| usize::try_from(n / 2).unwrap_or(usize::MAX)) else {
        return max_connections;
    };
    if max_connections > half && half >= 1 {
        tracing::warn!(
            "--max-connections {max_connections} is above half the open-file limit ({}): serving {half} at once",
            half.saturating_mul(2)
        );
        half
    } else {
        max_connections
    }
}

/// Arguments of `sitemon serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    web: WebOptions,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: ServeArgs) -> anyhow::Result<()> {
    let listen = args.web.listen.unwrap_or_else(default_listen);
    let config = args.web.config(listen, Registry::new())?;
    let database = args.db.config()?;
    let pool = sitemon_web::connect(&database, &config).await?;
    let shutdown = crate::shutdown::on_signal();
    // `start` logs the address ("dashboard at http://…/").
    let (_, server) = sitemon_web::start(config, pool, shutdown).await?;
    server
        .await
        .context("the dashboard panicked")?
        .context("the dashboard stopped")?;
    Ok(())
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cap_stays_below_half_the_open_file_limit() {
        assert_eq!(super::capped(256, Some(20_000)), 256);
        assert_eq!(super::capped(256, Some(300)), 150);
        assert_eq!(super::capped(256, None), 256);
    }
}
