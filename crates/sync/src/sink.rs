//! The sync's [`Sink`]: what one batch of messages stores, inside the consumer's transaction
//! ([`sitemon_consume`] moves the offsets, checks the lease and commits).
//!
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
//!    latest checks ([`sitemon_core::history::rollup_ctes`]), so rollups and rows commit or
//!    roll back together, and a duplicate or a reject never counts. When some
//!    row was left out, one more statement finds those whose `check_id` is stored nowhere:
//!    their key holds another check, so they are kept as rejects (`key_collision`) instead
//!    of being counted as duplicates.
//! 3. One such `INSERT` for the rejects.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sitemon_consume::{Entry, Message, Result, Sink, bounded_db};
use sitemon_core::history::Partitions;

use crate::decode::{
    Decoded, Reject, RejectKind, StatusRow, decode, key_collision_reason, unknown_site_reason,
};
use crate::stats::Stats;

/// How long one statement of a batch may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Stores check events as rows of `website_status` (and their rollups), or as rejects.
#[derive(Debug)]
pub(crate) struct Rows {
    pub(crate) stats: Stats,
    /// The pool the partitions a batch needs are created through, before the batch's own
    /// transaction writes into them.
    pub(crate) pool: sqlx::PgPool,
    pub(crate) partitions: Arc<Partitions>,
}

/// What one committed batch stored.
#[derive(Debug)]
pub(crate) struct Stored {
    rows: u64,
    duplicates: u64,
    rejects: [u64; RejectKind::ALL.len()],
}

impl Sink for Rows {
    type Item = Decoded;
    type Stored = Stored;

    fn decode(&self, message: Message) -> Decoded {
        decode(message)
    }

    async fn store(
        &self,
        tx: &mut sqlx::PgConnection,
        topic: &str,
        batch: &[Entry<Decoded>],
    ) -> Result<Stored> {
        let mut site_ids: Vec<i32> = batch
            .iter()
            .filter_map(|e| match &e.item {
                Decoded::Row(row) => Some(row.website_id),
                Decoded::Reject(_) => None,
            })
            .collect();
        site_ids.sort_unstable();
        site_ids.dedup();
        // Every day of the batch within the retention has its partition before a row goes
        // in: otherwise a catching-up sync's or a backfill's rows stay in the default
        // partition for good.
        let days: BTreeSet<time::Date> = batch
            .iter()
            .filter_map(|e| match &e.item {
                Decoded::Row(row) => Some(row.checked_at.to_offset(time::UtcOffset::UTC).date()),
                Decoded::Reject(_) => None,
            })
            .collect();
        self.partitions
            .ensure(&self.pool, time::OffsetDateTime::now_utc(), days)
            .await?;
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
        let mut rows: Vec<&StatusRow> = Vec::with_capacity(batch.len());
        let mut rejects: Vec<&Reject> = Vec::new();
        // Rows that became rejects in this transaction.
        let mut turned: Vec<Reject> = Vec::new();
        for entry in batch {
            match &entry.item {
                Decoded::Row(row) if present.binary_search(&row.website_id).is_ok() => {
                    rows.push(row);
                }
                Decoded::Row(row) => {
                    let reason = unknown_site_reason(row.website_id);
                    turned.push(row.clone().into_reject(RejectKind::UnknownSite, reason));
                }
                Decoded::Reject(reject) => rejects.push(reject),
            }
        }
        let row_count = rows.len() as u64;
        let mut inserted = 0;
        if !rows.is_empty() {
            let (stored, collided) = insert_rows(tx, topic, &rows).await?;
            inserted = stored;
            for i in collided {
                let row = rows[i];
                let reason = key_collision_reason(row);
                turned.push(row.clone().into_reject(RejectKind::KeyCollision, reason));
            }
        }
        rejects.extend(&turned);
        let rejected = if rejects.is_empty() {
            [0; RejectKind::ALL.len()]
        } else {
            insert_rejects(tx, topic, &rejects).await?
        };
        let collided = rejected[RejectKind::KeyCollision.index()];
        Ok(Stored {
            rows: inserted,
            duplicates: row_count.saturating_sub(inserted + collided),
            rejects: rejected,
        })
    }

    fn committed(&self, stored: Stored) {
        self.stats
            .committed(stored.rows, stored.duplicates, &stored.rejects);
    }

    fn progress(&self) -> String {
        self.stats.progress()
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
