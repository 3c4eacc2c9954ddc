//! A session: the lease group, the readers of the partitions held, and the writer.
//!
//! Every worker of a consumer on a topic (every `sitemon sync`, every `sitemon alert`) joins
//! the consumer's lease group ([`super::lease_group`]) on a dedicated PostgreSQL connection
//! ([`LeaseGroup`]), and every [`ConsumerConfig::rebalance_every`]
//! (and at once on start) it rebalances with the topic's current partition count:
//! - for each partition it **takes**, it starts a reader at the stored offset (read only now,
//!   with the lease held, so it is the last one the previous owner committed);
//! - for each partition it **gives away** (beyond its fair share `ceil(P / W)` now that
//!   another worker has joined), it stops the reader, has the writer store the batch in
//!   hand (every chunk of that partition is ahead of the flush in the channel), and only then
//!   releases the lease.
//!
//! The writer checks the lease in every batch's transaction (`writer.rs`). When the lease
//! connection fails, every lease may be gone: the session ends at once, its readers stop, the
//! batch in hand is dropped (it will be read again from the stored offset), and
//! [`super::run`] joins again after a backoff. On shutdown, the writer stores the batch in
//! hand first, then the session leaves the group: the others take the partitions on their next
//! rebalance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::Client;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result};
use super::reader::{Readers, RunningReader};
use super::stats::Stats;
use super::writer::{Restarts, ToWriter, Writer};
use super::{CHANNEL_CHUNKS, ConsumerConfig, Sink, StartFrom, lease_group};
use crate::lease::LeaseGroup;
use sitemon_core::retry::Backoff;

/// Runs one session: joins the lease group, reads the partitions it holds and writes them,
/// until `shutdown` (then `Ok`, after the last commit and leaving the group) or the first
/// error that needs a fresh start.
pub(crate) async fn run<S: Sink>(
    config: &ConsumerConfig,
    sink: &Arc<S>,
    pool: &PgPool,
    client: Arc<Client>,
    stats: &Arc<Stats>,
    initial_partitions: i32,
    shutdown: &CancellationToken,
) -> Result<()> {
    let topic = config.kafka.topic.clone();
    let partitions = sitemon_core::kafka::partition_count(&client, &topic)
        .await?
        .ok_or_else(|| Error::UnknownTopic {
            topic: topic.clone(),
        })?;
    let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
    let group = lease_group(&config.name, &topic);
    let lease = LeaseGroup::join(&config.database, &group)
        .await
        .map_err(|source| Error::Lease {
            topic: topic.clone(),
            source,
        })?;
    tracing::info!(group, "joined the lease group");

    // Writers side by side, each with the partitions `p % writers == its index` and a
    // transaction of its own: one task, which ends with the first writer's error (the others'
    // transactions in progress are dropped, so rolled back) or when all have finished.
    let abandon = CancellationToken::new();
    let restarts = Arc::new(Restarts::default());
    let mut senders = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..config.writers.max(1) {
        let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        senders.push(sender);
        let writer = Writer {
            pool: pool.clone(),
            consumer: config.name.clone(),
            topic: topic.clone(),
            sink: Arc::clone(sink),
            batch_size: config.batch_size,
            batch_wait: config.batch_wait,
            stats: Arc::clone(stats),
            lease: lease.holder(),
            restarts: Arc::clone(&restarts),
        };
        let (finish, abandon) = (shutdown.clone(), abandon.clone());
        writers.push(async move { writer.run(receiver, finish, abandon).await });
    }
    let writer =
        tokio::spawn(async move { futures::future::try_join_all(writers).await.map(drop) });
    let mut session = Session {
        lease,
        readers: Readers {
            client,
            pool: pool.clone(),
            consumer: config.name.clone(),
            topic,
            sink: Arc::clone(sink),
            chunks: senders,
            stats: Arc::clone(stats),
            generations: Arc::default(),
            fetch_min_bytes: config.fetch_min_bytes,
            fetch_max_wait: config.fetch_max_wait,
        },
        running: BTreeMap::new(),
        restarts,
        writer: Some(writer),
        partitions,
        initial_partitions,
        start: config.start,
    };
    let result = session
        .keep(
            config.rebalance_every,
            config.partition_poll_every,
            shutdown,
        )
        .await;
    session.end(result, &abandon).await
}

/// One session's leases, readers and writer.
#[derive(Debug)]
struct Session<S: Sink> {
    /// This worker's place in the group, on its dedicated connection.
    lease: LeaseGroup,
    readers: Readers<S>,
    /// The reader of every partition held.
    running: BTreeMap<i32, RunningReader>,
    /// Partitions whose reader the writer asks to start again.
    restarts: Arc<Restarts>,
    /// The writer task, until its result has been taken.
    writer: Option<JoinHandle<Result<()>>>,
    /// The topic's partition count, as last asked.
    partitions: i32,
    /// Partitions below this existed when the sync started: without a stored offset they
    /// start at `start`; later ones at the earliest offset.
    initial_partitions: i32,
    start: StartFrom,
}

impl<S: Sink> Session<S> {
    /// Rebalances now and every `every` (give or take a quarter, so that workers started
    /// together do not rebalance in step) until `shutdown` (`Ok`) or an error.
    async fn keep(
        &mut self,
        every: Duration,
        poll_every: Duration,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut next_poll = later(poll_every);
        let mut rebalances = Backoff::every(every).start();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                result = self.rebalance() => result?,
            }
            let wait = tokio::time::sleep(rebalances.next_wait().unwrap_or(every));
            tokio::pin!(wait);
            loop {
                let writer = self
                    .writer
                    .as_mut()
                    .ok_or_else(|| Error::Task("the writer is gone".into()))?;
                let restarts = Arc::clone(&self.restarts);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    result = writer => {
                        self.writer = None;
                        return Err(writer_failure(result));
                    }
                    partitions = restarts.wait() => self.restart(partitions).await?,
                    () = &mut wait => break,
                }
            }
            if Instant::now() >= next_poll {
                next_poll = later(poll_every);
                self.poll_partitions().await;
            }
        }
    }

    /// Asks the topic for its partition count; partitions added are shared out on the next
    /// rebalance.
    async fn poll_partitions(&mut self) {
        let topic = &self.readers.topic;
        match sitemon_core::kafka::partition_count(&self.readers.client, topic).await {
            Ok(Some(count)) => {
                let count = i32::try_from(count).unwrap_or(i32::MAX);
                if count > self.partitions {
                    tracing::info!(topic = %topic, from = self.partitions, to = count, "new partitions");
                    self.partitions = count;
                }
            }
            Ok(None) => {
                tracing::error!(topic = %topic, "the topic has disappeared; waiting for it");
            }
            Err(e) => tracing::warn!("cannot list the topic's partitions: {e}"),
        }
    }

    fn lost(&self, source: sitemon_core::Error) -> Error {
        Error::Lease {
            topic: self.readers.topic.clone(),
            source,
        }
    }

    /// One rebalance: gives the surplus away (after its data is stored), takes free
    /// partitions up to the fair share and starts their readers.
    async fn rebalance(&mut self) -> Result<()> {
        let plan = self
            .lease
            .rebalance(self.partitions)
            .await
            .map_err(|e| self.lost(e))?;
        if !plan.surplus.is_empty() {
            let stopping: Vec<RunningReader> = plan
                .surplus
                .iter()
                .filter_map(|p| self.running.remove(p))
                .collect();
            for reader in &stopping {
                reader.cancel();
            }
            for reader in stopping {
                reader.stop().await;
            }
            self.flush().await?;
            for &partition in &plan.surplus {
                self.lease
                    .release(partition)
                    .await
                    .map_err(|e| self.lost(e))?;
                self.readers.stats.forget(partition);
            }
            tracing::info!(
                topic = %self.readers.topic,
                members = plan.members,
                partitions = ?plan.surplus,
                "gave partitions to the other workers"
            );
        }
        let mut started = Vec::new();
        for partition in plan.acquired {
            let start = if partition < self.initial_partitions {
                self.start
            } else {
                StartFrom::Earliest
            };
            match self.readers.start(partition, start).await {
                Ok(reader) => {
                    self.running.insert(partition, reader);
                    started.push(partition);
                }
                Err(e) => {
                    tracing::warn!(
                        topic = %self.readers.topic,
                        partition,
                        "cannot start reading the partition ({e}); giving its lease back \
                         for the next rebalance"
                    );
                    self.lease
                        .release(partition)
                        .await
                        .map_err(|e| self.lost(e))?;
                }
            }
        }
        if !started.is_empty() {
            tracing::info!(
                topic = %self.readers.topic,
                members = plan.members,
                took = ?started,
                held = ?self.running.keys().collect::<Vec<_>>(),
                "took partition leases"
            );
        }
        self.readers.stats.leases_held(self.running.len());
        Ok(())
    }

    /// Starts the readers of `partitions` again from their stored offsets (the writer found
    /// those moved away); the other readers go on.
    async fn restart(&mut self, partitions: BTreeSet<i32>) -> Result<()> {
        for partition in partitions {
            let Some(reader) = self.running.remove(&partition) else {
                continue; // given away meanwhile
            };
            reader.stop().await;
            match self.readers.start(partition, StartFrom::Earliest).await {
                Ok(reader) => {
                    self.running.insert(partition, reader);
                }
                Err(e) => {
                    tracing::warn!(
                        topic = %self.readers.topic,
                        partition,
                        "cannot start reading the partition again ({e}); giving its lease \
                         back for the next rebalance"
                    );
                    self.lease
                        .release(partition)
                        .await
                        .map_err(|e| self.lost(e))?;
                    self.readers.stats.forget(partition);
                }
            }
        }
        self.readers.stats.leases_held(self.running.len());
        Ok(())
    }

    /// Has every writer store the batch in hand, and waits until they have.
    async fn flush(&mut self) -> Result<()> {
        let mut flushed = true;
        for chunks in &self.readers.chunks {
            let (done, stored) = oneshot::channel();
            let sent = chunks.send(ToWriter::Flush(done)).await.is_ok();
            flushed &= sent && stored.await.is_ok();
        }
        if flushed {
            return Ok(());
        }
        // The writer ended: its error is the session's.
        match self.writer.take() {
            Some(writer) => Err(writer_failure(writer.await)),
            None => Err(Error::Task("the writer is gone".into())),
        }
    }

    /// Ends the session. On `Ok` (shutdown) the writer stores the batch in hand, then the
    /// group is left, so the others can take over at once. On an error the batch in hand is
    /// dropped (the partitions' next owner reads it again) before the leases go.
    async fn end(mut self, result: Result<()>, abandon: &CancellationToken) -> Result<()> {
        let result = match result {
            Ok(()) => match self.writer.take() {
                Some(writer) => match writer.await {
                    Ok(written) => written,
                    Err(e) => Err(Error::Task(e.to_string())),
                },
                None => Ok(()),
            },
            Err(e) => {
                abandon.cancel();
                if let Some(writer) = self.writer.take() {
                    let _ = writer.await;
                }
                Err(e)
            }
        };
        let running = std::mem::take(&mut self.running);
        for reader in running.values() {
            reader.cancel();
        }
        for (partition, reader) in running {
            reader.stop().await;
            self.readers.stats.forget(partition);
        }
        self.readers.stats.leases_held(0);
        let lease_failed = matches!(result, Err(Error::Lease { .. }));
        if lease_failed {
            // The connection is broken or hanging: dropping it is all there is to do.
            drop(self.lease);
        } else if let Err(e) = self.lease.leave().await {
            tracing::warn!("leaving the lease group: {e}; the leases go with the connection");
        } else {
            tracing::info!(topic = %self.readers.topic, "left the lease group");
        }
        result
    }
}

fn writer_failure(result: Result<Result<()>, tokio::task::JoinError>) -> Error {
    match result {
        Ok(Err(e)) => e,
        Ok(Ok(())) => Error::Task("the writer stopped".into()),
        Err(e) => Error::Task(format!("the writer failed: {e}")),
    }
}

/// `now + wait`, or a century ahead when that overflows (a setting of `u64::MAX` seconds).
fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}
