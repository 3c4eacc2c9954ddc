//! The consumed offsets, kept in `sync_offsets` next to what they produced, per consumer
//! (`consumer`: `sync` for the sync's rows, `alert` for the alert service's state).
//!
//! A partition's `next_offset` is the first offset not yet stored (as a row or a reject).
//! It moves only inside a batch's transaction, and only by compare-and-set from the value
//! the batch was read after ([`advance`]): a worker that is not the one that read the
//! previous batch (another worker, or this one after its lease was lost and taken over)
//! cannot store a stale batch, and a batch is never stored twice.
//!
//! # Incarnations
//! A topic that is deleted and created again starts at offset 0 again. Each partition's
//! offsets therefore belong to an *incarnation*, numbered from 0, which the stored position
//! and the keys of the rows and rejects carry. Next to the offset the sync keeps a
//! fingerprint of the record just before it ([`super::fingerprint`]); a reader that (re)starts
//! fetches that record again, and when it is gone past the partition's end or holds another
//! record, the topic is a new one: the reader moves the stored position to the new
//! incarnation's first offset (through the writer, in order with the batches before it) and
//! reads it from its start. Old rows stay; new rows get new keys.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use super::error::{Error, Result, bounded_db};

/// How long one offsets statement may take.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A place in a partition: an offset of one incarnation of the topic (see the module's
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The topic incarnation, from 0.
    pub incarnation: i32,
    /// The offset in the partition.
    pub offset: i64,
}

impl Position {
    /// `offset` in the first incarnation.
    #[cfg(test)]
    pub(crate) fn at(offset: i64) -> Self {
        Self {
            incarnation: 0,
            offset,
        }
    }
}

/// What is stored for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The first message not yet stored.
    pub(crate) next: Position,
    /// The fingerprint of the record before `next`, when known.
    pub(crate) fingerprint: Option<i64>,
}

/// The stored position of one partition, if it has one.
pub(crate) async fn load_one(
    pool: &PgPool,
    consumer: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<Stored>> {
    let row: Option<(i32, i64, Option<i64>)> = bounded_db(
        "reading a stored offset",
        STATEMENT_TIMEOUT,
        sqlx::query_as(
            "SELECT incarnation, next_offset, last_fingerprint FROM sync_offsets
             WHERE consumer = $1 AND kafka_topic = $2 AND kafka_partition_id = $3",
        )
        .bind(consumer)
        .bind(topic)
        .bind(partition)
        .fetch_optional(pool),
    )
    .await?;
    Ok(row.map(|(incarnation, offset, fingerprint)| Stored {
        next: Position {
            incarnation,
            offset,
        },
        fingerprint,
    }))
}

/// Stores `next_offset` (incarnation 0) for a partition that has no stored position yet;
/// leaves a stored one alone. Returns what is stored afterwards.
pub(crate) async fn init(
    pool: &PgPool,
    consumer: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> Result<Stored> {
    let (incarnation, offset, fingerprint): (i32, i64, Option<i64>) = bounded_db(
        "storing a partition's first offset",
        STATEMENT_TIMEOUT,
        sqlx::query_as(
            "INSERT INTO sync_offsets (consumer, kafka_topic, kafka_partition_id, next_offset)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (consumer, kafka_topic, kafka_partition_id)
             DO UPDATE SET next_offset = sync_offsets.next_offset
             RETURNING incarnation, next_offset, last_fingerprint",
        )
        .bind(consumer)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .fetch_one(pool),
    )
    .await?;
    Ok(Stored {
        next: Position {
            incarnation,
            offset,
        },
        fingerprint,
    })
}

/// One partition's move in a batch: from the position the batch was read after to the first
/// position after it (in the same incarnation, or the first offset of the next one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advance {
    pub(crate) partition: i32,
    pub(crate) expected: Position,
    pub(crate) next: Position,
    /// The fingerprint of the record before `next`, when known.
    pub(crate) fingerprint: Option<i64>,
}

/// Moves the stored offsets of a batch, in the batch's transaction, each only if it still
/// holds `expected`.
///
/// # Errors
/// [`Error::OffsetMoved`] when one did not: the caller must roll back.
pub(crate) async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    consumer: &str,
    topic: &str,
    advances: &[Advance],
) -> Result<()> {
    let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
    let expected_incarnation: Vec<i32> = advances.iter().map(|a| a.expected.incarnation).collect();
    let expected: Vec<i64> = advances.iter().map(|a| a.expected.offset).collect();
    let next_incarnation: Vec<i32> = advances.iter().map(|a| a.next.incarnation).collect();
    let next: Vec<i64> = advances.iter().map(|a| a.next.offset).collect();
    let fingerprint: Vec<Option<i64>> = advances.iter().map(|a| a.fingerprint).collect();
    let moved: Vec<i32> = bounded_db(
        "storing the offsets",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "UPDATE sync_offsets AS o
             SET incarnation = n.next_incarnation, next_offset = n.next,
                 last_fingerprint = n.fingerprint, updated_at = now()
             FROM UNNEST($3::int[], $4::int[], $5::bigint[], $6::int[], $7::bigint[],
                         $8::bigint[])
                  AS n(partition, expected_incarnation, expected, next_incarnation, next,
                       fingerprint)
             WHERE o.consumer = $1
               AND o.kafka_topic = $2
               AND o.kafka_partition_id = n.partition
               AND o.incarnation = n.expected_incarnation
               AND o.next_offset = n.expected
             RETURNING o.kafka_partition_id",
        )
        .bind(consumer)
        .bind(topic)
        .bind(&partitions)
        .bind(&expected_incarnation)
        .bind(&expected)
        .bind(&next_incarnation)
        .bind(&next)
        .bind(&fingerprint)
        .fetch_all(&mut **tx),
    )
    .await?;
    if let Some(stale) = advances.iter().find(|a| !moved.contains(&a.partition)) {
        return Err(Error::OffsetMoved {
            topic: topic.to_owned(),
            partition: stale.partition,
            expected: stale.expected.offset,
            incarnation: stale.expected.incarnation,
        });
    }
    Ok(())
}
