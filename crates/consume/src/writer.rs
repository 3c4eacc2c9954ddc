//! Storing batches: the sink's work and the offsets in one transaction.
//!
//! # One batch, one transaction
//! 1. The sink stores what the batch's messages mean ([`Sink::store`]): the sync its rows,
//!    rejects and rollups, the alert service its state changes, incidents and outbox.
//! 2. The compare-and-set of the partitions' next offsets (`offsets::advance`).
//! 3. The lease check: the worker's lease connection still holds the lease of every
//!    partition of the batch, asked of `pg_locks` in this transaction
//!    ([`LeaseHolder::holds_all`]). A worker whose lease connection died (its partitions may
//!    be another worker's by now) rolls back instead of storing a stale batch; the
//!    compare-and-set above covers the moment between this check and the commit.
//!
//! Any failure rolls everything back, and the consumer goes on from the stored offsets.
//!
//! # Hand-over
//! When the session gives partitions away it first stops their readers, then sends a
//! [`ToWriter::Flush`] down the same channel: every chunk of those partitions is ahead of it,
//! so once the writer has stored the batch in hand and acknowledged, nothing of theirs is left
//! here and their leases can be released.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Sink;
use super::batch::{Batch, Chunk};
use super::error::{Error, Result, bounded_db};
use super::offsets;
use super::stats::Stats;
use crate::lease::LeaseHolder;

/// What the readers and the session send the writer.
#[derive(Debug)]
pub(crate) enum ToWriter<T> {
    /// A reader's fetch, with the reader's generation.
    Chunk(Chunk<T>, u64),
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
#[derive(Debug)]
pub(crate) struct Writer<S> {
    pub(crate) pool: PgPool,
    /// The consumer's name: whose stored offsets these are.
    pub(crate) consumer: String,
    pub(crate) topic: String,
    pub(crate) sink: Arc<S>,
    pub(crate) batch_size: usize,
    pub(crate) batch_wait: Duration,
    pub(crate) stats: Arc<Stats>,
    /// The lease session every batch checks before it commits.
    pub(crate) lease: LeaseHolder,
    /// Where the writer asks for a partition's reader to start again.
    pub(crate) restarts: Arc<Restarts>,
}

impl<S: Sink> Writer<S> {
    /// Gathers chunks into batches and stores them until `finish` (the batch in hand is
    /// stored first), `abandon` (the batch in hand is dropped, a transaction in progress
    /// rolled back: the leases are gone) or until every sender is gone.
    ///
    /// # Errors
    /// The first batch that cannot be stored; nothing of it is.
    pub(crate) async fn run(
        &self,
        mut chunks: mpsc::Receiver<ToWriter<S::Item>>,
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
        chunks: &mut mpsc::Receiver<ToWriter<S::Item>>,
        finish: &CancellationToken,
    ) -> Result<()> {
        let mut pending: Option<Chunk<S::Item>> = None;
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
                    deadline = Instant::now().checked_add(self.batch_wait);
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
    async fn store(&self, batch: &mut Batch<S::Item>) -> Result<Vec<i32>> {
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
                        consumer = %self.consumer,
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
    async fn try_store(&self, batch: &Batch<S::Item>) -> Result<()> {
        let advances = batch.advances();
        let messages = batch.len() as u64;
        let mut tx = bounded_db(
            "starting a transaction",
            STATEMENT_TIMEOUT,
            self.pool.begin(),
        )
        .await?;
        let stored = self
            .sink
            .store(&mut tx, &self.topic, &batch.entries)
            .await?;
        offsets::advance(&mut tx, &self.consumer, &self.topic, &advances).await?;
        let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
        if !self.lease.holds_all(&mut *tx, &partitions).await? {
            return Err(Error::LeaseLost {
                topic: self.topic.clone(),
                partitions,
            });
        }
        bounded_db("committing a batch", STATEMENT_TIMEOUT, tx.commit()).await?;

        self.sink.committed(stored);
        self.stats.committed(messages);
        for advance in &advances {
            self.stats.stored(advance.partition, advance.next.offset);
        }
        tracing::debug!(consumer = %self.consumer, messages, "batch stored");
        Ok(())
    }
}
