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
//!    offset (primary key) or a retried produce (same `check_id`) stores nothing. The same
//!    statement adds exactly the rows it inserted to the hourly and daily rollups and the
//!    latest checks ([`sitemon_core::history::rollup_ctes`]), so rollups and rows commit or roll back
//!    together, and a duplicate or a reject never counts. When some
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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sitemon_core::lease::LeaseHolder;
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot};
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
    /// A reader's fetch, with the reader's generation.
    Chunk(Chunk, u64),
    /// Store the batch in hand now, then acknowledge: the session waits for this before
    /// it releases partitions whose readers it stopped.
    Flush(oneshot::Sender<()>),
}

/// Partitions whose reader must start again from the stored offset: a batch found the
/// stored offset moved away from where the reader read (a worker that crashed had stored
/// it a moment before, or an operator rewound it). The writer stores the rest of the batch
/// and drops the partition's chunks until its new reader's; the session restarts that one
/// reader, and every other partition reads on.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    partitions: std::sync::Mutex<BTreeSet<i32>>,
    notify: Notify,
}

impl Restarts {
    fn request(&self, partition: i32) {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(partition);
        self.notify.notify_one();
    }

    /// Waits for partitions to restart, and takes them.
    pub(crate) async fn wait(&self) -> BTreeSet<i32> {
        loop {
            let taken = std::mem::take(
                &mut *self
                    .partitions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if !taken.is_empty() {
                return taken;
            }
            self.notify.notified().await;
        }
    }
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
    /// Where the writer asks for a partition's reader to start again.
    pub(crate) restarts: Arc<Restarts>,
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
        // The generation of the last chunk taken of each partition; and of a partition whose
        // reader must start again, the generation whose chunks are dropped until then.
        let mut latest: HashMap<i32, u64> = HashMap::new();
        let mut dropping: HashMap<i32, u64> = HashMap::new();
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
                        Some(ToWriter::Chunk(chunk, generation)) => {
                            if dropping.get(&chunk.partition).is_some_and(|&g| generation <= g) {
                                continue;
                            }
                            dropping.remove(&chunk.partition);
                            latest.insert(chunk.partition, generation);
                            pending = Some(chunk);
                        }
                        Some(ToWriter::Flush(done)) => { flushed = Some(done); break; }
                        None => { last = true; break; }
                    },
                }
            }
            if !batch.is_empty() {
                for partition in self.store(&mut batch).await? {
                    dropping.insert(partition, latest.get(&partition).copied().unwrap_or(0));
                    if pending.as_ref().is_some_and(|c| c.partition == partition) {
                        pending = None;
                    }
                    self.restarts.request(partition);
                }
            }
            if let Some(done) = flushed {
                let _ = done.send(());
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Stores one batch; returns the partitions left out of it because their stored offset
    /// had moved away (their readers must start again).
    ///
    /// # Errors
    /// Any other failure: nothing of the batch is stored.
    async fn store(&self, batch: &mut Batch) -> Result<Vec<i32>> {
        let mut left_out = Vec::new();
        loop {
            match self.try_store(batch).await {
                Ok(()) => return Ok(left_out),
                Err(Error::OffsetMoved {
                    partition,
                    expected,
                    ..
                }) => {
                    tracing::warn!(
                        topic = %self.topic,
                        partition,
                        "the stored offset moved away from {expected} under this worker; \
                         its reader starts again from the stored offset, the other \
                         partitions go on"
                    );
                    batch.remove_partition(partition);
                    left_out.push(partition);
                    if batch.is_empty() {
                        return Ok(left_out);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stores one batch in one transaction.
    async fn try_store(&self, batch: &Batch) -> Result<()> {
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
        let mut rows: Vec<&StatusRow> = Vec::with_capacity(batch.rows.len());
        // Rows that became rejects in this transaction.
        let mut turned: Vec<Reject> = Vec::new();
        for row in &batch.rows {
            if present.binary_search(&row.website_id).is_ok() {
                rows.push(row);
            } else {
                let reason = unknown_site_reason(row.website_id);
                turned.push(row.clone().into_reject(RejectKind::UnknownSite, reason));
            }
        }
        let row_count = rows.len() as u64;
        let mut inserted = 0;
        if !rows.is_empty() {
            let (stored, collided) = insert_rows(&mut tx, &self.topic, &rows).await?;
            inserted = stored;
            for i in collided {
                let row = rows[i];
                let reason = key_collision_reason(row);
                turned.push(row.clone().into_reject(RejectKind::KeyCollision, reason));
            }
        }
        let rejects: Vec<&Reject> = batch.rejects.iter().chain(&turned).collect();
        let rejected = if rejects.is_empty() {
            [0; RejectKind::ALL.len()]
        } else {
            insert_rejects(&mut tx, &self.topic, &rejects).await?
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

/// Inserts the rows; returns how many were inserted, and (by index) the rows that were not although
/// no row holds their `check_id`: their key already holds another check (a topic created
/// again under an incarnation the sync did not notice), so they are no duplicates and must
/// not be dropped as one.
async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    rows: &[&StatusRow],
) -> Result<(u64, Vec<usize>)> {
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
    let mut degraded = Vec::with_capacity(n);
    for row in rows {
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
        degraded.push(row.degraded);
    }
    let statement = format!(
        "WITH source AS (
             INSERT INTO website_status (
                 kafka_topic, kafka_topic_incarnation, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, check_id, is_up, status_code,
                 response_time_ms, error_kind, location, degraded)
             SELECT $1, t.i, t.p, t.o, t.w, t.ts, t.info::jsonb, t.id, t.up, t.sc, t.rt, t.ek,
                    t.loc, t.dg
             FROM UNNEST($2::int[], $3::int[], $4::bigint[], $5::int[], $6::timestamptz[],
                         $7::text[], $8::uuid[], $9::bool[], $10::int2[], $11::float8[],
                         $12::text[], $13::text[], $14::bool[])
                  AS t(i, p, o, w, ts, info, id, up, sc, rt, ek, loc, dg)
             ON CONFLICT DO NOTHING
             RETURNING {}
         ),
         {}
         SELECT count(*) FROM source",
        sitemon_core::history::STORED_COLUMNS,
        sitemon_core::history::rollup_ctes("source")
    );
    let inserted: i64 = bounded_db(
        "inserting a batch of rows and their rollups",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(&statement)
            .bind(topic)
            .bind(incarnation)
            .bind(partition)
            .bind(offset)
            .bind(website_id)
            .bind(&checked_at)
            .bind(request_info)
            .bind(&check_id)
            .bind(is_up)
            .bind(status_code)
            .bind(response_time_ms)
            .bind(error_kind)
            .bind(location)
            .bind(degraded)
            .fetch_one(&mut *tx),
    )
    .await?;
    let inserted = u64::try_from(inserted).unwrap_or(0);
    if inserted == n as u64 {
        return Ok((inserted, Vec::new()));
    }
    // Every row inserted now holds its check_id; a row left out whose check_id is nowhere
    // collided on its key alone.
    let homeless: std::collections::HashSet<i64> = bounded_db(
        "looking for key collisions",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "SELECT t.n FROM UNNEST($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS t(id, ts, n)
             WHERE NOT EXISTS (SELECT 1 FROM website_status s
                               WHERE s.check_id = t.id AND s.timestamp_utc = t.ts)",
        )
        .bind(&check_id)
        .bind(&checked_at)
        .fetch_all(&mut *tx),
    )
    .await?
    .into_iter()
    .collect();
    let collided = (0..n)
        .filter(|i| homeless.contains(&(*i as i64 + 1)))
        .collect();
    Ok((inserted, collided))
}

/// Inserts the rejects; returns how many of each kind were inserted.
async fn insert_rejects(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    rejects: &[&Reject],
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
        key.push(reject.key.as_deref());
        payload.push(reject.payload.as_deref());
        reason.push(reject.reason.as_str());
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
