//! The PostgreSQL side both ends share: the pool, the embedded migrations, and the
//! `websites` table.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub use sqlx::postgres::PgPool;

use crate::config::DatabaseConfig;
use crate::error::{Error, Result, one_line};
use crate::site::{NewSite, Site, SiteSettings};
use crate::site_alerts::{SiteAlerts, check_channels_exist};
use crate::statement::bounded;

/// The schema, from `migrations/`, embedded in every binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// How long connecting (or waiting for a free pooled connection) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one statement on the `websites` table (add, remove, list) may take.
pub const SITE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a pool of at most `max_connections` and proves it works with one round trip.
///
/// # Errors
/// [`Error::DatabaseAuth`] at once when the server refuses the login (sqlx does not retry
/// it); [`Error::DatabaseConnect`] naming `host:port/database` (never the password) when the
/// server cannot be reached or refuses TLS, within [`CONNECT_TIMEOUT`].
pub async fn connect(config: &DatabaseConfig, max_connections: u32) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(config.options().clone());
    match tokio::time::timeout(CONNECT_TIMEOUT, pool).await {
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(e)) => Err(connect_error(config, &e)),
        Err(_) => Err(Error::DatabaseConnect {
            target: config.target().to_owned(),
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        }),
    }
}

/// Whether the server refused the login: SQLSTATE class 28, "invalid authorization
/// specification" (28P01 a wrong password, 28000 an unknown user or no `pg_hba.conf` entry).
pub fn is_auth_failure(error: &sqlx::Error) -> bool {
    crate::refusal::database_refused(error)
}

/// A failed connection attempt as [`Error::DatabaseAuth`] or [`Error::DatabaseConnect`]:
/// the pool's here, the lease connection's in `sitemon-consume`.
pub fn connect_error(config: &DatabaseConfig, error: &sqlx::Error) -> Error {
    let target = config.target().to_owned();
    let reason = describe_connect_error(error);
    if is_auth_failure(error) {
        Error::DatabaseAuth { target, reason }
    } else {
        Error::DatabaseConnect { target, reason }
    }
}

fn describe_connect_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => format!("TLS failed: {}", one_line(&tls.to_string())),
        sqlx::Error::Database(db) => one_line(db.message()),
        sqlx::Error::PoolTimedOut => format!("no answer within {CONNECT_TIMEOUT:?}"),
        other => one_line(&other.to_string()),
    }
}

/// Applies the embedded migrations, creates the day partitions from yesterday to a few
/// days ahead, and moves history of the layout before partitions into them; applying them
/// again is a no-op. See [`migrate_with_progress`].
///
/// # Errors
/// [`Error::Migrate`], [`Error::Database`], [`Error::Timeout`].
pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrate_with_progress(pool, |_| {}).await
}

/// [`migrate`], telling `progress` how many rows of old history have moved.
///
/// # Errors
/// [`Error::Migrate`], [`Error::Database`], [`Error::Timeout`].
pub async fn migrate_with_progress(
    pool: &PgPool,
    progress: impl FnMut(crate::history::Progress),
) -> Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| Error::Migrate(Box::new(e)))?;
    let now = time::OffsetDateTime::now_utc();
    crate::history::ensure_partitions(pool, crate::history::days_around(now)).await?;
    crate::history::move_unpartitioned(pool, progress).await?;
    Ok(())
}

/// The columns of `websites` that make a [`Site`], for every query that reads one.
pub(crate) const SITE_COLUMNS: &str = "id, url, name, check_interval, up_regex, regex_must_not_match, \
     method, headers, body, expect_status, degraded_after_ms, timeout_ms, follow_redirects, \
     tls_verify, failure_threshold, success_threshold, min_locations, \
     EXTRACT(EPOCH FROM reminder_every)::float8 AS reminder_every_secs, cert_expiry_days, \
     channels";

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Site {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row as _;
        let method: String = row.try_get("method")?;
        let headers: sqlx::types::Json<std::collections::BTreeMap<String, String>> =
            row.try_get("headers")?;
        Ok(Self {
            id: row.try_get("id")?,
            settings: SiteSettings {
                url: row.try_get("url")?,
                name: row.try_get("name")?,
                interval: row.try_get::<i32, _>("check_interval")?.into(),
                regex: row.try_get("up_regex")?,
                regex_must_not_match: row.try_get("regex_must_not_match")?,
                method: method.parse().map_err(|e| sqlx::Error::ColumnDecode {
                    index: "method".into(),
                    source: Box::new(e),
                })?,
                headers: headers.0,
                body: row.try_get("body")?,
                expect_status: row.try_get("expect_status")?,
                degraded_after_ms: row
                    .try_get::<Option<i32>, _>("degraded_after_ms")?
                    .map(Into::into),
                timeout_ms: row.try_get::<Option<i32>, _>("timeout_ms")?.map(Into::into),
                follow_redirects: row.try_get("follow_redirects")?,
                tls_verify: row.try_get("tls_verify")?,
                alerts: SiteAlerts {
                    failure_threshold: count(row, "failure_threshold")?,
                    success_threshold: count(row, "success_threshold")?,
                    min_locations: count(row, "min_locations")?,
                    reminder_every: row
                        .try_get::<Option<f64>, _>("reminder_every_secs")?
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(std::time::Duration::from_secs_f64),
                    cert_expiry_days: count(row, "cert_expiry_days")?,
                    channels: row.try_get("channels")?,
                },
            },
        })
    }
}

/// A non-negative integer column that may be NULL.
fn count(row: &sqlx::postgres::PgRow, column: &str) -> Result<Option<u32>, sqlx::Error> {
    use sqlx::Row as _;
    Ok(row
        .try_get::<Option<i32>, _>(column)?
        .and_then(|v| u32::try_from(v).ok()))
}

/// The statement that inserts a [`NewSite`] (`$1`..`$19` as [`bind_site`] binds them).
const INSERT_SITE: &str = "INSERT INTO websites (url, name, check_interval, up_regex, \
     regex_must_not_match, method, headers, body, expect_status, degraded_after_ms, timeout_ms, \
     follow_redirects, tls_verify, failure_threshold, success_threshold, min_locations, \
     reminder_every, cert_expiry_days, channels) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             make_interval(secs => $17), $18, $19)";

/// The statement that overwrites site `$20` with a [`NewSite`].
const UPDATE_SITE: &str = "UPDATE websites SET url = $1, name = $2, check_interval = $3, \
     up_regex = $4, regex_must_not_match = $5, method = $6, headers = $7, body = $8, \
     expect_status = $9, degraded_after_ms = $10, timeout_ms = $11, follow_redirects = $12, \
     tls_verify = $13, failure_threshold = $14, success_threshold = $15, min_locations = $16, \
     reminder_every = make_interval(secs => $17), cert_expiry_days = $18, channels = $19 \
     WHERE id = $20";

/// Binds a validated site's settings as `$1`..`$19` of [`INSERT_SITE`] and [`UPDATE_SITE`].
fn bind_site<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    site: &'q NewSite,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let s = site.settings();
    // NewSite::from_settings checked every number's range.
    let narrow = |ms: Option<i64>| ms.map(|ms| ms as i32);
    query
        .bind(&s.url)
        .bind(&s.name)
        .bind(site.check_interval())
        .bind(&s.regex)
        .bind(&s.regex_must_not_match)
        .bind(s.method.as_str())
        .bind(sqlx::types::Json(&s.headers))
        .bind(&s.body)
        .bind(&s.expect_status)
        .bind(narrow(s.degraded_after_ms))
        .bind(narrow(s.timeout_ms))
        .bind(s.follow_redirects)
        .bind(s.tls_verify)
        .bind(count_column(s.alerts.failure_threshold))
        .bind(count_column(s.alerts.success_threshold))
        .bind(count_column(s.alerts.min_locations))
        .bind(s.alerts.reminder_every.map(|d| d.as_secs_f64()))
        .bind(count_column(s.alerts.cert_expiry_days))
        .bind(&s.alerts.channels)
}

/// A validated count (at most a few thousand) as its `integer` column.
fn count_column(value: Option<u32>) -> Option<i32> {
    value.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

/// Registers a site and returns its id.
///
/// # Errors
/// [`Error::DuplicateUrl`] or [`Error::DuplicateName`] with the existing site's id when the
/// URL or name is registered already; [`Error::Database`] or [`Error::Timeout`] otherwise.
pub async fn insert_site(pool: &PgPool, site: &NewSite) -> Result<i32> {
    let mut tx = bounded("starting a transaction", SITE_QUERY_TIMEOUT, pool.begin()).await?;
    let id = insert_site_on(&mut tx, site).await?;
    bounded("committing the new site", SITE_QUERY_TIMEOUT, tx.commit()).await?;
    Ok(id)
}

/// [`insert_site`] on a connection the caller holds, e.g. inside its transaction.
///
/// # Errors
/// As [`insert_site`]; [`Error::InvalidSetting`] (`alerts.channels`) when a channel the site
/// names does not exist.
pub async fn insert_site_on(conn: &mut sqlx::PgConnection, site: &NewSite) -> Result<i32> {
    check_channels_exist(&mut *conn, &site.settings().alerts).await?;
    let inserted: Option<i32> = bounded(
        "adding the site",
        SITE_QUERY_TIMEOUT,
        bind_site(
            sqlx::query(&format!(
                "{INSERT_SITE} ON CONFLICT DO NOTHING RETURNING id"
            )),
            site,
        )
        .fetch_optional(&mut *conn),
    )
    .await?
    .map(|row: sqlx::postgres::PgRow| sqlx::Row::get(&row, 0));
    if let Some(id) = inserted {
        return Ok(id);
    }
    match find_conflict(&mut *conn, site, None).await? {
        Some(conflict) => Err(conflict),
        // Deleted between our two statements: the caller may simply try again.
        None => Err(Error::Database {
            doing: "adding the site",
            source: Box::new(sqlx::Error::RowNotFound),
        }),
    }
}

/// The site other than `except` that holds `site`'s URL or name, as the error that says so.
async fn find_conflict(
    executor: impl sqlx::PgExecutor<'_>,
    site: &NewSite,
    except: Option<i32>,
) -> Result<Option<Error>> {
    let holder: Option<(i32, bool)> = bounded(
        "looking up the existing site",
        SITE_QUERY_TIMEOUT,
        sqlx::query_as(
            "SELECT id, url = $1 FROM websites
             WHERE (url = $1 OR name = $2) AND id IS DISTINCT FROM $3
             ORDER BY url = $1 DESC LIMIT 1",
        )
        .bind(site.url())
        .bind(&site.settings().name)
        .bind(except)
        .fetch_optional(executor),
    )
    .await?;
    Ok(holder.map(|(existing_id, by_url)| {
        if by_url {
            Error::DuplicateUrl {
                url: crate::mask::mask_url(site.url()),
                existing_id,
            }
        } else {
            Error::DuplicateName {
                name: site.settings().name.clone().unwrap_or_default(),
                existing_id,
            }
        }
    }))
}

/// One site by id.
///
/// # Errors
/// [`Error::UnknownSite`]; [`Error::Database`], [`Error::Timeout`].
pub async fn get_site(pool: &PgPool, id: i64) -> Result<Site> {
    let Ok(id32) = i32::try_from(id) else {
        return Err(Error::UnknownSite { id });
    };
    bounded(
        "reading the site",
        SITE_QUERY_TIMEOUT,
        sqlx::query_as(&format!(
            "SELECT {SITE_COLUMNS} FROM websites WHERE id = $1"
        ))
        .bind(id32)
        .fetch_optional(pool),
    )
    .await?
    .ok_or(Error::UnknownSite { id })
}

/// Changes site `id` in one transaction: `change` gets its current settings and returns the
/// new ones validated; nothing is written when it fails.
///
/// # Errors
/// [`Error::UnknownSite`]; the error of `change`; [`Error::DuplicateUrl`] or
/// [`Error::DuplicateName`] when another site has the new URL or name; [`Error::Database`],
/// [`Error::Timeout`].
pub async fn update_site(
    pool: &PgPool,
    id: i64,
    change: impl FnOnce(SiteSettings) -> Result<NewSite>,
) -> Result<Site> {
    let Ok(id32) = i32::try_from(id) else {
        return Err(Error::UnknownSite { id });
    };
    let mut tx = bounded("starting a transaction", SITE_QUERY_TIMEOUT, pool.begin()).await?;
    let current: Site = bounded(
        "reading the site",
        SITE_QUERY_TIMEOUT,
        sqlx::query_as(&format!(
            "SELECT {SITE_COLUMNS} FROM websites WHERE id = $1 FOR UPDATE"
        ))
        .bind(id32)
        .fetch_optional(&mut *tx),
    )
    .await?
    .ok_or(Error::UnknownSite { id })?;
    let site = change(current.settings)?;
    check_channels_exist(&mut tx, &site.settings().alerts).await?;
    if let Some(conflict) = find_conflict(&mut *tx, &site, Some(id32)).await? {
        return Err(conflict);
    }
    bounded(
        "updating the site",
        SITE_QUERY_TIMEOUT,
        bind_site(sqlx::query(UPDATE_SITE), &site)
            .bind(id32)
            .execute(&mut *tx),
    )
    .await?;
    bounded("committing the change", SITE_QUERY_TIMEOUT, tx.commit()).await?;
    Ok(Site {
        id: id32,
        settings: site.into_settings(),
    })
}

/// Inserts a validated site within a transaction (for `apply`).
pub(crate) async fn insert_site_in(tx: &mut sqlx::PgConnection, site: &NewSite) -> Result<i32> {
    check_channels_exist(&mut *tx, &site.settings().alerts).await?;
    bounded(
        "adding a site",
        SITE_QUERY_TIMEOUT,
        bind_site(sqlx::query(&format!("{INSERT_SITE} RETURNING id")), site).fetch_one(&mut *tx),
    )
    .await
    .map(|row| sqlx::Row::get(&row, 0))
}

/// Overwrites site `id` within a transaction (for `apply`).
pub(crate) async fn update_site_in(
    tx: &mut sqlx::PgConnection,
    id: i32,
    site: &NewSite,
) -> Result<()> {
    check_channels_exist(&mut *tx, &site.settings().alerts).await?;
    bounded(
        "changing a site",
        SITE_QUERY_TIMEOUT,
        bind_site(sqlx::query(UPDATE_SITE), site)
            .bind(id)
            .execute(&mut *tx),
    )
    .await
    .map(drop)
}

/// Removes a site; its history goes with it (`ON DELETE CASCADE`).
///
/// # Errors
/// [`Error::UnknownSite`] when no site has this id; [`Error::Database`], [`Error::Timeout`].
pub async fn delete_site(pool: &PgPool, id: i64) -> Result<()> {
    let Ok(id32) = i32::try_from(id) else {
        return Err(Error::UnknownSite { id });
    };
    let deleted = bounded(
        "removing the site",
        SITE_QUERY_TIMEOUT,
        sqlx::query("DELETE FROM websites WHERE id = $1")
            .bind(id32)
            .execute(pool),
    )
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(Error::UnknownSite { id });
    }
    Ok(())
}

/// Every registered site, by id.
///
/// # Errors
/// [`Error::Database`], [`Error::Timeout`].
pub async fn list_sites(pool: &PgPool) -> Result<Vec<Site>> {
    bounded(
        "listing the sites",
        SITE_QUERY_TIMEOUT,
        sqlx::query_as(&format!("SELECT {SITE_COLUMNS} FROM websites ORDER BY id")).fetch_all(pool),
    )
    .await
}
