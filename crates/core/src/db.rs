//! The PostgreSQL side both ends share: the pool, the embedded migrations, and the
//! `websites` table.

use std::future::Future;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub use sqlx::postgres::PgPool;

use crate::config::DatabaseConfig;
use crate::error::{Error, Result, one_line};
use crate::retry;
use crate::site::{NewSite, Site};

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

/// A failed connection attempt as [`Error::DatabaseAuth`] or [`Error::DatabaseConnect`].
pub(crate) fn connect_error(config: &DatabaseConfig, error: &sqlx::Error) -> Error {
    let target = config.target().to_owned();
    let reason = describe_connect_error(error);
    if is_auth_failure(error) {
        Error::DatabaseAuth { target, reason }
    } else {
        Error::DatabaseConnect { target, reason }
    }
}

/// Runs one statement for at most `after`: its error becomes [`Error::Database`] and its
/// timeout [`Error::Timeout`], both naming what it was `doing`.
pub(crate) async fn bounded<T>(
    doing: &'static str,
    after: Duration,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T> {
    let statement = async { statement.await.map_err(db_error(doing)) };
    retry::timeout(doing, after, statement).await
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

fn db_error(doing: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database {
        doing,
        source: Box::new(source),
    }
}

/// Registers a site and returns its id.
///
/// # Errors
/// [`Error::DuplicateUrl`] with the existing id when the URL is registered already;
/// [`Error::Database`] or [`Error::Timeout`] otherwise.
pub async fn insert_site(pool: &PgPool, site: &NewSite) -> Result<i32> {
    let inserted: Option<i32> = bounded(
        "adding the site",
        SITE_QUERY_TIMEOUT,
        sqlx::query_scalar(
            "INSERT INTO websites (url, check_interval, up_regex) VALUES ($1, $2, $3)
             ON CONFLICT (url) DO NOTHING
             RETURNING id",
        )
        .bind(site.url())
        .bind(site.check_interval())
        .bind(site.up_regex())
        .fetch_optional(pool),
    )
    .await?;
    if let Some(id) = inserted {
        return Ok(id);
    }
    let existing_id: Option<i32> = bounded(
        "looking up the existing site",
        SITE_QUERY_TIMEOUT,
        sqlx::query_scalar("SELECT id FROM websites WHERE url = $1")
            .bind(site.url())
            .fetch_optional(pool),
    )
    .await?;
    match existing_id {
        Some(existing_id) => Err(Error::DuplicateUrl {
            url: site.url().to_owned(),
            existing_id,
        }),
        // Deleted between our two statements: the caller may simply try again.
        None => Err(Error::Database {
            doing: "adding the site",
            source: Box::new(sqlx::Error::RowNotFound),
        }),
    }
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
        sqlx::query_as("SELECT id, url, check_interval, up_regex FROM websites ORDER BY id")
            .fetch_all(pool),
    )
    .await
}
