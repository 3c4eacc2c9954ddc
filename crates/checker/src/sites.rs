//! The site list, following the `websites` table while the checker runs.
//!
//! A trigger on `websites` (migration `20261128000002_site_notify.sql`) sends a NOTIFY on
//! every statement that changes it; each notification (a burst of them coalesced) reloads
//! the list, and a periodic full reload covers notifications lost while the listening
//! connection was down. Unchanged sites keep their `Arc`, so the scheduler sees at a glance
//! what changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use sitemon_core::db::PgPool;
use sitemon_core::retry;
use sitemon_core::{Site, SiteSettings};
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, PlanError, Result};
use crate::plan::CheckPlan;

/// The channel the trigger notifies.
pub(crate) const CHANNEL: &str = "sitemon_sites";
/// How long a burst of notifications is gathered before one reload.
const COALESCE: Duration = Duration::from_millis(100);
/// The most a steady stream of notifications may delay a reload.
const COALESCE_MAX: Duration = Duration::from_millis(1000);

/// A site as the checker uses it: its check plan made once, per change of the row.
#[derive(Debug)]
pub(crate) struct SiteSpec {
    pub(crate) id: i32,
    /// The bucket the site falls into ([`crate::buckets::bucket_of`]).
    pub(crate) bucket: i32,
    /// The site's URL as its events carry it: masked once, here
    /// ([`sitemon_core::mask::mask_url`]), not on every check.
    pub(crate) shown_url: String,
    /// What a check does and how its answer is judged, or why the row's settings cannot be
    /// used.
    pub(crate) plan: std::result::Result<CheckPlan, PlanError>,
    pub(crate) interval: Duration,
    /// The row's regex as written, for the event.
    pub(crate) regex_pattern: Option<String>,
    /// This site's limit for one check, if it has one.
    pub(crate) timeout: Option<Duration>,
    /// The row's settings as written, for the event.
    pub(crate) settings: SiteSettings,
}

/// Every site, by id.
pub(crate) type SiteList = Arc<Vec<Arc<SiteSpec>>>;

/// Turns rows into [`SiteSpec`]s, reusing what did not change.
#[derive(Debug, Default)]
pub(crate) struct SiteBook {
    current: HashMap<i32, (Site, Arc<SiteSpec>)>,
    /// Compiled once per pattern, shared by every site with it.
    regexes: HashMap<String, std::result::Result<Arc<Regex>, Arc<sitemon_core::Error>>>,
}

impl SiteBook {
    pub(crate) fn update(&mut self, rows: Vec<Site>) -> SiteList {
        let mut next = HashMap::with_capacity(rows.len());
        let mut list = Vec::with_capacity(rows.len());
        for row in rows {
            let spec = match self.current.remove(&row.id) {
                Some((old, spec)) if old == row => spec,
                _ => Arc::new(self.spec(&row)),
            };
            list.push(Arc::clone(&spec));
            next.insert(row.id, (row, spec));
        }
        self.current = next;
        // Forget the regexes no site uses any more.
        let used: std::collections::HashSet<&str> = self
            .current
            .values()
            .flat_map(|(row, _)| {
                [&row.settings.regex, &row.settings.regex_must_not_match]
                    .into_iter()
                    .filter_map(|pattern| pattern.as_deref())
            })
            .collect();
        self.regexes
            .retain(|pattern, _| used.contains(pattern.as_str()));
        Arc::new(list)
    }

    fn spec(&mut self, row: &Site) -> SiteSpec {
        let settings = &row.settings;
        // The table allows 1..=86400; a row that dodged the constraint is clamped.
        let seconds = settings.interval.clamp(1, 86_400);
        let regex_pattern = settings.regex.clone().filter(|p| !p.is_empty());
        let plan = CheckPlan::new(settings, |pattern| {
            self.regexes
                .entry(pattern.to_owned())
                .or_insert_with(|| sitemon_core::site::compile_up_regex(pattern).map_err(Arc::new))
                .clone()
        });
        // The table allows any positive value; a row that dodged `add-site` is capped.
        let timeout = settings.timeout_ms.map(|ms| {
            Duration::from_millis(
                ms.clamp(1, sitemon_core::site::MAX_TIMEOUT_MS)
                    .unsigned_abs(),
            )
        });
        SiteSpec {
            id: row.id,
            bucket: crate::buckets::bucket_of(row.id),
            shown_url: sitemon_core::mask::mask_url(&settings.url),
            plan,
            interval: Duration::from_secs(seconds.unsigned_abs()),
            regex_pattern,
            timeout,
            settings: settings.clone(),
        }
    }
}

/// Starts listening before the first load, so that no change between the two is missed.
///
/// # Errors
/// [`Error::Listen`], or a timeout naming `target` (`host:port/database`).
pub(crate) async fn listen(pool: &PgPool, target: &str) -> Result<PgListener> {
    let listen = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    retry::timeout(
        &format!("listening for site changes on PostgreSQL at {target}"),
        sitemon_core::db::CONNECT_TIMEOUT,
        async {
            listen.await.map_err(|e| Error::Listen {
                target: target.to_owned(),
                reason: crate::error::chain(&e),
            })
        },
    )
    .await
}

/// Loads every site once (bounded by [`sitemon_core::db::SITE_QUERY_TIMEOUT`]).
pub(crate) async fn load(pool: &PgPool) -> sitemon_core::Result<Vec<Site>> {
    sitemon_core::db::list_sites(pool).await
}

/// Keeps `sites` up to date with the table until `shutdown`.
pub(crate) async fn follow(
    pool: PgPool,
    mut listener: PgListener,
    mut book: SiteBook,
    sites: watch::Sender<SiteList>,
    reload_every: Duration,
    shutdown: CancellationToken,
) {
    let mut reload_tick = tokio::time::interval(reload_every);
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reload_tick.reset();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            notification = listener.try_recv() => match notification {
                Ok(Some(_)) => coalesce(&mut listener, &shutdown).await,
                Ok(None) => tracing::warn!(
                    "the connection listening for site changes was lost and re-opened; reloading"
                ),
                Err(e) => {
                    tracing::warn!(
                        "listening for site changes failed ({}); retrying",
                        crate::error::chain(&e)
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
            _ = reload_tick.tick() => {}
        }
        match load(&pool).await {
            Ok(rows) => {
                let list = book.update(rows);
                sites.send_if_modified(|current| {
                    let changed = current.len() != list.len()
                        || current
                            .iter()
                            .zip(list.iter())
                            .any(|(a, b)| !Arc::ptr_eq(a, b));
                    if changed {
                        tracing::info!(sites = list.len(), "site list changed");
                        *current = list;
                    }
                    changed
                });
            }
            Err(e) => tracing::warn!("cannot reload the sites ({e}); checking the last list"),
        }
        reload_tick.reset();
    }
}

/// Gathers the rest of a burst of notifications (a script adding many sites one by one).
async fn coalesce(listener: &mut PgListener, shutdown: &CancellationToken) {
    let until = tokio::time::Instant::now() + COALESCE_MAX;
    loop {
        let wait = COALESCE.min(until.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            () = shutdown.cancelled() => return,
            next = tokio::time::timeout(wait, listener.try_recv()) => match next {
                Ok(Ok(Some(_))) if wait > Duration::ZERO => {}
                _ => return,
            },
        }
    }
}

/// A site for unit tests.
#[cfg(test)]
pub(crate) fn test_spec(id: i32, interval_secs: i32, url: &str) -> Arc<SiteSpec> {
    let mut settings = SiteSettings::new(url);
    settings.interval = interval_secs.into();
    Arc::new(SiteBook::default().spec(&Site { id, settings }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i32, url: &str, interval: i32, regex: Option<&str>) -> Site {
        let mut settings = SiteSettings::new(url);
        settings.interval = interval.into();
        settings.regex = regex.map(str::to_owned);
        Site { id, settings }
    }

    #[test]
    fn keeps_unchanged_sites_and_shares_regexes() {
        let mut book = SiteBook::default();
        let first = book.update(vec![
            row(1, "http://a.invalid/", 5, Some("ok")),
            row(2, "http://b.invalid/", 5, Some("ok")),
        ]);
        let second = book.update(vec![
            row(1, "http://a.invalid/", 5, Some("ok")),
            row(2, "http://b.invalid/", 7, Some("ok")),
            row(3, "http://c.invalid/", 5, None),
        ]);
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert!(!Arc::ptr_eq(&first[1], &second[1]));
        assert_eq!(second[1].interval, Duration::from_secs(7));
        let regex = |spec: &SiteSpec| {
            let plan = spec.plan.as_ref().expect("compiles");
            plan.regex.clone().expect("regex")
        };
        assert!(Arc::ptr_eq(&regex(&second[0]), &regex(&second[1])));
        assert!(second[2].plan.as_ref().expect("plan").regex.is_none());
    }

    #[test]
    fn bad_rows_become_specs_that_say_why() {
        let mut book = SiteBook::default();
        let list = book.update(vec![
            row(1, "not a url", 5, None),
            row(2, "http://a.invalid/", 5, Some("(unclosed")),
            row(3, "http://b.invalid/", 5, Some("")),
        ]);
        let url_error = list[0].plan.as_ref().expect_err("bad url");
        assert!(matches!(url_error, PlanError::Url { .. }));
        assert!(url_error.to_string().contains("not a url"));
        let regex_error = list[1].plan.as_ref().expect_err("bad regex");
        assert!(matches!(regex_error, PlanError::Regex { key: "regex", .. }));
        let regex_error = regex_error.to_string();
        assert!(regex_error.contains("(unclosed"), "{regex_error}");
        assert!(list[2].plan.as_ref().expect("plan").regex.is_none());
    }
}
