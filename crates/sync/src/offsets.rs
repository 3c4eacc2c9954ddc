//! The consumed offsets, kept in `sync_offsets` next to the rows they produced.
//!
//! A partition's `next_offset` is the first offset not yet stored (as a row or a reject).
//! It moves only inside a batch's transaction, and only by compare-and-set from the value
//! the batch was read after ([`advance`]): a worker that is not the one that read the
//! previous batch (another worker, or this one after its lease was lost and taken over)
//! cannot store a stale batch, and a batch is never stored twice.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use crate::error::{Error, Result, bounded_db};

/// How long one offsets statement may take.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The stored next offset of one partition, if it has one.
pub(crate) async fn load_one(pool: &PgPool, topic: &str, partition: i32) -> Result<Option<i64>> {
    bounded_db(
        "reading a stored offset",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "SELECT next_offset FROM sync_offsets
             WHERE kafka_topic = $1 AND kafka_partition_id = $2",
        )
        .bind(topic)
        .bind(partition)
        .fetch_optional(pool),
    )
    .await
}

/// Stores `next_offset` for a partition that has no stored offset yet; leaves a stored one
/// alone. Returns the offset that is stored afterwards.
pub(crate) async fn init(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> Result<i64> {
    bounded_db(
        "storing a partition's first offset",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "INSERT INTO sync_offsets (kafka_topic, kafka_partition_id, next_offset)
             VALUES ($1, $2, $3)
             ON CONFLICT (kafka_topic, kafka_partition_id)
             DO UPDATE SET next_offset = sync_offsets.next_offset
             RETURNING next_offset",
        )
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .fetch_one(pool),
    )
    .await
}

/// One partition's move in a batch: from the offset the batch was read after to the first
/// offset after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advance {
    pub(crate) partition: i32,
    pub(crate) expected: i64,
    pub(crate) next: i64,
}

/// Moves the stored offsets of a batch, in the batch's transaction, each only if it still
/// holds `expected`.
///
/// # Errors
/// [`Error::OffsetMoved`] when one did not: the caller must roll back.
pub(crate) async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    advances: &[Advance],
) -> Result<()> {
    let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
    let expected: Vec<i64> = advances.iter().map(|a| a.expected).collect();
    let next: Vec<i64> = advances.iter().map(|a| a.next).collect();
    let moved: Vec<i32> = bounded_db(
        "storing the offsets",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "UPDATE sync_offsets AS o
             SET next_offset = n.next, updated_at = now()
             FROM UNNEST($2::int[], $3::bigint[], $4::bigint[]) AS n(partition, expected, next)
             WHERE o.kafka_topic = $1
               AND o.kafka_partition_id = n.partition
               AND o.next_offset = n.expected
             RETURNING o.kafka_partition_id",
        )
        .bind(topic)
        .bind(&partitions)
        .bind(&expected)
        .bind(&next)
        .fetch_all(&mut **tx),
    )
    .await?;
    if let Some(stale) = advances.iter().find(|a| !moved.contains(&a.partition)) {
        return Err(Error::OffsetMoved {
            topic: topic.to_owned(),
            partition: stale.partition,
            expected: stale.expected,
        });
    }
    Ok(())
}
