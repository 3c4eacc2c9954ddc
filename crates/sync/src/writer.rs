//! Storing batches: rows, rejects and offsets in one transaction.
//!
//! # One batch, one transaction
//! 1. `SELECT id FROM websites WHERE id = ANY(…) ORDER BY id FOR KEY SHARE`: the sites the
//!    batch's rows refer to, locked against a concurrent `DELETE` until the commit. A site
//!    deleted before the lock is simply absent (a `DELETE` in progress is waited for), so the
//!    set is exact for the rest of the transaction: rows of present sites go in, rows of
//!    absent ones become rejects, and the foreign key can never abort the batch. Locking in
//!    id order keeps two writers from deadlocking each other; a deadlock with a multi-row
//!    `DELETE` is still possible, PostgreSQL breaks it by failing one side, and if that is
//!    the batch it is read and written again.
//! 2. One `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` for the rows: a replayed
//!    offset (primary key) or a retried produce (same `check_id`) stores nothing.
//! 3. One such `INSERT` for the rejects.
//! 4. The compare-and-set of the partitions' next offsets (`offsets::advance`).
//!
//! Any failure rolls everything back, and the sync goes on from the stored offsets.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Chunk};
use crate::decode::{Reject, StatusRow, unknown_site_reason};
use crate::error::{Result, bounded_db};
use crate::offsets;
use crate::stats::Stats;

/// How long one statement of a batch may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The writer's settings.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub(crate) pool: PgPool,
    pub(crate) topic: String,
    pub(crate) batch_size: usize,
    pub(crate) batch_wait: Duration,
    pub(crate) stats: Arc<Stats>,
}

impl Writer {
    /// Gathers chunks into batches and stores them until `shutdown` (the batch in hand is
    /// stored first) or until every reader is gone.
    ///
    /// # Errors
    /// The first batch that cannot be stored; nothing of it is.
    pub(crate) async fn run(
        &self,
        chunks: &mut mpsc::Receiver<Chunk>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut pending: Option<Chunk> = None;
        loop {
            let mut batch = Batch::new(self.batch_size);
            let mut deadline: Option<Instant> = None;
            let mut last = false;
            loop {
                if let Some(chunk) = pending.take() {
                    pending = batch.push(chunk);
                }
                if pending.is_some() || batch.is_full() {
                    break;
                }
                if deadline.is_none() && !batch.is_empty() {
                    deadline = Some(Instant::now() + self.batch_wait);
                }
                let until = deadline.unwrap_or_else(Instant::now);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => { last = true; break; }
                    _ = tokio::time::sleep_until(until), if deadline.is_some() => break,
                    chunk = chunks.recv() => match chunk {
                        Some(chunk) => pending = Some(chunk),
                        None => { last = true; break; }
                    },
                }
            }
            if !batch.is_empty() {
                self.store(batch).await?;
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Stores one batch in one transaction.
    async fn store(&self, batch: Batch) -> Result<()> {
        let advances = batch.advances();
        let messages = batch.len() as u64;
        let mut tx = bounded_db(
            "starting a transaction",
            STATEMENT_TIMEOUT,
            self.pool.begin(),
        )
        .await?;

        let mut site_ids: Vec<i32> = batch.rows.iter().map(|r| r.website_id).collect();
        site_ids.sort_unstable();
        site_ids.dedup();
        let present: Vec<i32> = if site_ids.is_empty() {
            Vec::new()
        } else {
            bounded_db(
                "locking the batch's sites",
                STATEMENT_TIMEOUT,
                sqlx::query_scalar(
                    "SELECT id FROM websites WHERE id = ANY($1) ORDER BY id FOR KEY SHARE",
                )
                .bind(&site_ids)
                .fetch_all(&mut *tx),
            )
            .await?
        };
        let mut rows = Vec::with_capacity(batch.rows.len());
        let mut rejects = batch.rejects;
        for row in batch.rows {
            if present.binary_search(&row.website_id).is_ok() {
                rows.push(row);
            } else {
                let reason = unknown_site_reason(row.website_id);
                rejects.push(row.into_reject(reason));
            }
        }
        let row_count = rows.len() as u64;
        let inserted = if rows.is_empty() {
            0
        } else {
            insert_rows(&mut tx, &self.topic, rows).await?
        };
        let rejected = if rejects.is_empty() {
            0
        } else {
            insert_rejects(&mut tx, &self.topic, rejects).await?
        };
        offsets::advance(&mut tx, &self.topic, &advances).await?;
        bounded_db("committing a batch", STATEMENT_TIMEOUT, tx.commit()).await?;

        self.stats
            .committed(messages, inserted, row_count - inserted, rejected);
        for advance in &advances {
            self.stats.stored(advance.partition, advance.next);
        }
        tracing::debug!(messages, inserted, rejected, "batch stored");
        Ok(())
    }
}

async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    rows: Vec<StatusRow>,
) -> Result<u64> {
    let n = rows.len();
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut website_id = Vec::with_capacity(n);
    let mut checked_at = Vec::with_capacity(n);
    let mut request_info = Vec::with_capacity(n);
    let mut check_id = Vec::with_capacity(n);
    let mut is_up = Vec::with_capacity(n);
    let mut status_code = Vec::with_capacity(n);
    let mut response_time_ms = Vec::with_capacity(n);
    let mut error_kind = Vec::with_capacity(n);
    let mut location = Vec::with_capacity(n);
    for row in rows {
        partition.push(row.partition);
        offset.push(row.offset);
        website_id.push(row.website_id);
        checked_at.push(row.checked_at);
        request_info.push(row.request_info);
        check_id.push(row.check_id);
        is_up.push(row.is_up);
        status_code.push(row.status_code);
        response_time_ms.push(row.response_time_ms);
        error_kind.push(row.error_kind);
        location.push(row.location);
    }
    let done = bounded_db(
        "inserting a batch of rows",
        STATEMENT_TIMEOUT,
        sqlx::query(
            "INSERT INTO website_status (
                 kafka_topic, kafka_partition_id, kafka_offset_id, website_id, timestamp_utc,
                 request_info, check_id, is_up, status_code, response_time_ms, error_kind,
                 location)
             SELECT $1, t.p, t.o, t.w, t.ts, t.info::jsonb, t.id, t.up, t.sc, t.rt, t.ek, t.loc
             FROM UNNEST($2::int[], $3::bigint[], $4::int[], $5::timestamptz[], $6::text[],
                         $7::uuid[], $8::bool[], $9::int2[], $10::float8[], $11::text[],
                         $12::text[])
                  AS t(p, o, w, ts, info, id, up, sc, rt, ek, loc)
             ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .bind(website_id)
        .bind(checked_at)
        .bind(request_info)
        .bind(check_id)
        .bind(is_up)
        .bind(status_code)
        .bind(response_time_ms)
        .bind(error_kind)
        .bind(location)
        .execute(&mut *tx),
    )
    .await?;
    Ok(done.rows_affected())
}

async fn insert_rejects(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    rejects: Vec<Reject>,
) -> Result<u64> {
    let n = rejects.len();
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut key = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    for reject in rejects {
        tracing::warn!(
            partition = reject.partition,
            offset = reject.offset,
            "rejected message: {}",
            reject.reason
        );
        partition.push(reject.partition);
        offset.push(reject.offset);
        key.push(reject.key);
        payload.push(reject.payload);
        reason.push(reject.reason);
    }
    let done = bounded_db(
        "inserting a batch of rejects",
        STATEMENT_TIMEOUT,
        sqlx::query(
            "INSERT INTO website_status_rejects (
                 kafka_topic, kafka_partition_id, kafka_offset_id, message_key, payload, reason)
             SELECT $1, t.p, t.o, t.k, t.v, t.r
             FROM UNNEST($2::int[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[])
                  AS t(p, o, k, v, r)
             ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .bind(key)
        .bind(payload)
        .bind(reason)
        .execute(&mut *tx),
    )
    .await?;
    Ok(done.rows_affected())
}
