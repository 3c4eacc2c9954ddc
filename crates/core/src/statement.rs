//! One statement run with a bound: its error names what it was doing, its timeout too.
//! A leaf every module that talks to PostgreSQL uses, here and in the crates above this one.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::retry;

/// Runs one statement for at most `after`: its error becomes [`Error::Database`] and its
/// timeout [`Error::Timeout`], both naming what it was `doing`.
///
/// # Errors
/// [`Error::Database`] when the statement fails, [`Error::Timeout`] when it takes longer than
/// `after`.
pub async fn bounded<T>(
    doing: &'static str,
    after: Duration,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T> {
    let statement = async { statement.await.map_err(db_error(doing)) };
    retry::timeout(doing, after, statement).await
}

fn db_error(doing: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database {
        doing,
        source: Box::new(source),
    }
}
