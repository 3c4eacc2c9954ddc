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
//!    offset (primary key) or a retried produce (same `check_id`) stores nothing. When some
//!    row was left out, one more statement finds those whose `check_id` is stored nowhere:
//!    their key holds another check, so they are kept as rejects (`key_collision`) instead
//!    of being counted as duplicates.
//! 3. One such `INSERT` for the rejects.
//! 4. The compare-and-set of the partitions' next offsets (`offsets::advance`).
//! 5. The lease check: the worker's lease connection still holds the lease of every
//!    partition of the batch, asked of `pg_locks` in this transaction
//!    ([`LeaseHolder::holds_all`]). A worker whose lease connection died (its partitions may
//!    be another worker's by now) rolls back instead of storing a stale batch; the
//!    compare-and-set above covers the moment between this check and the commit.
//!
//! Any failure rolls everything back, and the sync goes on from the stored offsets.
//!
//! # Hand-over
//! When the session gives partitions away it first stops their readers, then sends a
//! [`ToWriter::Flush`] down the same channel: every chunk of those partitions is ahead of it,
//! so once the writer has stored the batch in hand and acknowledged, nothing of theirs is left
//! here and their leases can be released.

use std::sync::Arc;
use std::time::Duration;

use sitemon_core::lease::LeaseHolder;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Chunk};
use crate::decode::{Reject, RejectKind, StatusRow, key_collision_reason, unknown_site_reason};
use crate::error::{Error, Result, bounded_db};
use crate::offsets;
use crate::stats::Stats;

/// What the readers and the session send the writer.
#[derive(Debug)]
pub(crate) enum ToWriter {
    /// A reader's fetch.
    Chunk(Chunk),
    /// Store the batch in hand now, then acknowledge: the session waits for this before
    /// it releases partitions whose readers it stopped.
    Flush(oneshot::Sender<()>),
}

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
    /// The lease session every batch checks before it commits.
    pub(crate) lease: LeaseHolder,
}

impl Writer {
    /// Gathers chunks into batches and stores them until `finish` (the batch in hand is
    /// stored first), `abandon` (the batch in hand is dropped, a transaction in progress
    /// rolled back: the leases are gone) or until every sender is gone.
    ///
    /// # Errors
    /// The first batch that cannot be stored; nothing of it is.
    pub(crate) async fn run(
        &self,
        mut chunks: mpsc::Receiver<ToWriter>,
        finish: CancellationToken,
        abandon: CancellationToken,
    ) -> Result<()> {
        tokio::select! {
            biased;
            _ = abandon.cancelled() => Ok(()),
            result = self.write(&mut chunks, &finish) => result,
        }
    }

    async fn write(
        &self,
        chunks: &mut mpsc::Receiver<ToWriter>,
        finish: &CancellationToken,
    ) -> Result<()> {
        let mut pending: Option<Chunk> = None;
        loop {
            let mut batch = Batch::new(self.batch_size);
            let mut deadline: Option<Instant> = None;
            let mut last = false;
            let mut flushed = None;
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
                    _ = finish.cancelled() => { last = true; break; }
                    _ = tokio::time::sleep_until(until), if deadline.is_some() => break,
                    item = chunks.recv() => match item {
                        Some(ToWriter::Chunk(chunk)) => pending = Some(chunk),
                        Some(ToWriter::Flush(done)) => { flushed = Some(done); break; }
                        None => { last = true; break; }
                    },
                }
            }
            if !batch.is_empty() {
                self.store(batch).await?;
            }
            if let Some(done) = flushed {
                let _ = done.send(());
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
                rejects.push(row.into_reject(RejectKind::UnknownSite, reason));
            }
        }
        let row_count = rows.len() as u64;
        let mut inserted = 0;
        if !rows.is_empty() {
            let (stored, collided) = insert_rows(&mut tx, &self.topic, rows).await?;
            inserted = stored;
            for row in collided {
                let reason = key_collision_reason(&row);
                rejects.push(row.into_reject(RejectKind::KeyCollision, reason));
            }
        }
        let rejected = if rejects.is_empty() {
            [0; RejectKind::ALL.len()]
        } else {
            insert_rejects(&mut tx, &self.topic, rejects).await?
        };
        offsets::advance(&mut tx, &self.topic, &advances).await?;
        let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
        if !self.lease.holds_all(&mut *tx, &partitions).await? {
            return Err(Error::LeaseLost {
                topic: self.topic.clone(),
                partitions,
            });
        }
        bounded_db("committing a batch", STATEMENT_TIMEOUT, tx.commit()).await?;

        let collided = rejected[RejectKind::KeyCollision.index()];
        let duplicates = row_count.saturating_sub(inserted + collided);
        self.stats
            .committed(messages, inserted, duplicates, &rejected);
        for advance in &advances {
            self.stats.stored(advance.partition, advance.next.offset);
        }
        tracing::debug!(messages, inserted, "batch stored");
        Ok(())
    }
}

/// Inserts the rows; returns how many were inserted, and the rows that were not although
/// no row holds their `check_id`: their key already holds another check (a topic created
/// again under an incarnation the sync did not notice), so they are no duplicates and must
/// not be dropped as one.
async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    rows: Vec<StatusRow>,
) -> Result<(u64, Vec<StatusRow>)> {
    let n = rows.len();
    let mut partition = Vec::with_capacity(n);
    let mut incarnation = Vec::with_capacity(n);
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
    for row in &rows {
        partition.push(row.partition);
        incarnation.push(row.incarnation);
        offset.push(row.offset);
        website_id.push(row.website_id);
        checked_at.push(row.checked_at);
        request_info.push(row.request_info.as_str());
        check_id.push(row.check_id);
        is_up.push(row.is_up);
        status_code.push(row.status_code);
        response_time_ms.push(row.response_time_ms);
        error_kind.push(row.error_kind);
        location.push(row.location.as_str());
    }
    let done = bounded_db(
        "inserting a batch of rows",
        STATEMENT_TIMEOUT,
        sqlx::query(
            "INSERT INTO website_status (
                 kafka_topic, kafka_topic_incarnation, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, check_id, is_up, status_code,
                 response_time_ms, error_kind, location)
             SELECT $1, t.i, t.p, t.o, t.w, t.ts, t.info::jsonb, t.id, t.up, t.sc, t.rt, t.ek,
                    t.loc
             FROM UNNEST($2::int[], $3::int[], $4::bigint[], $5::int[], $6::timestamptz[],
                         $7::text[], $8::uuid[], $9::bool[], $10::int2[], $11::float8[],
                         $12::text[], $13::text[])
                  AS t(i, p, o, w, ts, info, id, up, sc, rt, ek, loc)
             ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(incarnation)
        .bind(partition)
        .bind(offset)
        .bind(website_id)
        .bind(checked_at)
        .bind(request_info)
        .bind(&check_id)
        .bind(is_up)
        .bind(status_code)
        .bind(response_time_ms)
        .bind(error_kind)
        .bind(location)
        .execute(&mut *tx),
    )
    .await?;
    let inserted = done.rows_affected();
    if inserted == n as u64 {
        return Ok((inserted, Vec::new()));
    }
    // Every row inserted now holds its check_id; a row left out whose check_id is nowhere
    // collided on its key alone.
    let homeless: std::collections::HashSet<i64> = bounded_db(
        "looking for key collisions",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "SELECT t.n FROM UNNEST($1::uuid[]) WITH ORDINALITY AS t(id, n)
             WHERE NOT EXISTS (SELECT 1 FROM website_status s WHERE s.check_id = t.id)",
        )
        .bind(&check_id)
        .fetch_all(&mut *tx),
    )
    .await?
    .into_iter()
    .collect();
    let collided = rows
        .into_iter()
        .enumerate()
        .filter(|(i, _)| homeless.contains(&(*i as i64 + 1)))
        .map(|(_, row)| row)
        .collect();
    Ok((inserted, collided))
}

/// Inserts the rejects; returns how many of each kind were inserted.
async fn insert_rejects(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    rejects: Vec<Reject>,
) -> Result<[u64; RejectKind::ALL.len()]> {
    let n = rejects.len();
    let kinds: std::collections::HashMap<(i32, i32, i64), RejectKind> = rejects
        .iter()
        .map(|r| ((r.incarnation, r.partition, r.offset), r.kind))
        .collect();
    let mut incarnation = Vec::with_capacity(n);
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
        incarnation.push(reject.incarnation);
        partition.push(reject.partition);
        offset.push(reject.offset);
        key.push(reject.key);
        payload.push(reject.payload);
        reason.push(reject.reason);
    }
    let inserted: Vec<(i32, i32, i64)> = bounded_db(
        "inserting a batch of rejects",
        STATEMENT_TIMEOUT,
        sqlx::query_as(
            "INSERT INTO website_status_rejects (
                 kafka_topic, kafka_topic_incarnation, kafka_partition_id, kafka_offset_id,
                 message_key, payload, reason)
             SELECT $1, t.i, t.p, t.o, t.k, t.v, t.r
             FROM UNNEST($2::int[], $3::int[], $4::bigint[], $5::bytea[], $6::bytea[],
                         $7::text[])
                  AS t(i, p, o, k, v, r)
             ON CONFLICT DO NOTHING
             RETURNING kafka_topic_incarnation, kafka_partition_id, kafka_offset_id",
        )
        .bind(topic)
        .bind(incarnation)
        .bind(partition)
        .bind(offset)
        .bind(key)
        .bind(payload)
        .bind(reason)
        .fetch_all(&mut *tx),
    )
    .await?;
    let mut counts = [0; RejectKind::ALL.len()];
    for at in inserted {
        if let Some(kind) = kinds.get(&at) {
            counts[kind.index()] += 1;
        }
    }
    Ok(counts)
}
