//! Reading the topic: one fetch loop per partition this worker holds the lease of.
//!
//! A reader fetches from its partition's next offset, decodes what it got and sends it to
//! the writer as one [`Chunk`] over a bounded channel: when PostgreSQL is slow the channel
//! fills, the send waits, and the reader stops fetching. Kafka errors (a broker restart)
//! are retried here with backoff and jitter, from the same offset; they never reach the
//! writer. The session (`session.rs`) starts a reader when it takes a partition's lease
//! and stops it before giving the lease away.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use sitemon_core::retry::{self, Retry};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::Chunk;
use crate::config::{RETRY, StartFrom};
use crate::decode::{Message, decode};
use crate::error::{Error, Result};
use crate::offsets;
use crate::stats::Stats;
use crate::writer::ToWriter;

/// How long one Kafka request may take, retries by rskafka included.
pub(crate) const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes one fetch asks for: bounds the memory of a chunk.
const FETCH_MAX_BYTES: i32 = 1 << 20;
/// How long the broker may hold a fetch open while the partition has nothing new.
const FETCH_MAX_WAIT_MS: i32 = 500;

/// What every reader of one session shares.
#[derive(Debug, Clone)]
pub(crate) struct Readers {
    pub(crate) client: Arc<Client>,
    pub(crate) pool: PgPool,
    pub(crate) topic: String,
    pub(crate) chunks: mpsc::Sender<ToWriter>,
    pub(crate) stats: Arc<Stats>,
}

/// A reader that runs: stop it with [`RunningReader::stop`].
#[derive(Debug)]
pub(crate) struct RunningReader {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningReader {
    /// Stops the reader and waits until it has: it sends nothing more.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Asks the reader to stop without waiting.
    pub(crate) fn cancel(&self) {
        self.stop.cancel();
    }
}

impl Readers {
    /// Starts a reader for `partition` at its stored offset; a partition without one starts
    /// at `start` (resolved now and stored, so that a restart agrees). Call it only with the
    /// partition's lease held, so that the stored offset is the last one its previous owner
    /// committed.
    pub(crate) async fn start(&self, partition: i32, start: StartFrom) -> Result<RunningReader> {
        let stored = offsets::load_one(&self.pool, &self.topic, partition).await?;
        let next = match stored {
            Some(next) => next,
            None => {
                let client = self.partition_client(partition).await?;
                let at = match start {
                    StartFrom::Earliest => OffsetAt::Earliest,
                    StartFrom::Latest => OffsetAt::Latest,
                };
                let offset = self.get_offset(&client, at).await?;
                offsets::init(&self.pool, &self.topic, partition, offset).await?
            }
        };
        self.stats.stored(partition, next);
        tracing::info!(topic = %self.topic, partition, next_offset = next, "reading partition");
        let stop = CancellationToken::new();
        let reader = Reader {
            shared: self.clone(),
            partition,
            next,
            retry: RETRY.start(),
            stop: stop.clone(),
        };
        Ok(RunningReader {
            stop,
            task: tokio::spawn(reader.run()),
        })
    }

    async fn partition_client(&self, partition: i32) -> Result<PartitionClient> {
        let client = self.client.partition_client(
            self.topic.clone(),
            partition,
            UnknownTopicHandling::Retry,
        );
        self.kafka("connect to", partition, client).await
    }

    async fn get_offset(&self, client: &PartitionClient, at: OffsetAt) -> Result<i64> {
        self.kafka(
            "list the offsets of",
            client.partition(),
            client.get_offset(at),
        )
        .await
    }

    /// Runs one rskafka call with [`KAFKA_TIMEOUT`].
    async fn kafka<T>(
        &self,
        operation: &'static str,
        partition: i32,
        call: impl Future<Output = Result<T, KafkaError>>,
    ) -> Result<T> {
        let call = async {
            call.await.map_err(|source| Error::Kafka {
                operation,
                topic: self.topic.clone(),
                partition,
                source: Box::new(source),
            })
        };
        let named = format!("Kafka: {operation} {}/{partition}", self.topic);
        retry::timeout(&named, KAFKA_TIMEOUT, call).await
    }
}

/// The fetch loop of one partition.
#[derive(Debug)]
struct Reader {
    shared: Readers,
    partition: i32,
    /// The next offset to fetch.
    next: i64,
    /// The waits after failures in a row.
    retry: Retry,
    /// Cancelled when the partition is given away or the session ends.
    stop: CancellationToken,
}

impl Reader {
    async fn run(mut self) {
        let stop = self.stop.clone();
        let mut client = None;
        while !stop.is_cancelled() {
            let step = async {
                let partition_client = match client.take() {
                    Some(c) => c,
                    None => Arc::new(self.shared.partition_client(self.partition).await?),
                };
                let result = self.step(&partition_client).await;
                client = Some(partition_client);
                result
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                result = step => result,
            };
            match result {
                Ok(()) => self.retry.reset(),
                Err(e) => {
                    client = None;
                    let wait = self.retry.next_wait().unwrap_or(RETRY.max);
                    tracing::warn!(
                        partition = self.partition,
                        "{e}; retrying from offset {} in {wait:?}",
                        self.next
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One fetch, handed to the writer.
    async fn step(&mut self, client: &PartitionClient) -> Result<()> {
        let fetch = client.fetch_records(self.next, 1..FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS);
        let named = format!("Kafka: fetch from {}/{}", self.shared.topic, self.partition);
        let fetched =
            retry::timeout(&named, KAFKA_TIMEOUT, async { Ok::<_, Error>(fetch.await) }).await?;
        let (records, high_watermark) = match fetched {
            Ok(fetched) => fetched,
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => return self.out_of_range(client).await,
            Err(source) => {
                return Err(Error::Kafka {
                    operation: "fetch from",
                    topic: self.shared.topic.clone(),
                    partition: self.partition,
                    source: Box::new(source),
                });
            }
        };
        self.shared
            .stats
            .high_watermark(self.partition, high_watermark);
        let messages: Vec<_> = records
            .into_iter()
            .filter(|r| r.offset >= self.next)
            .map(|r| {
                decode(Message {
                    partition: self.partition,
                    offset: r.offset,
                    key: r.record.key,
                    value: r.record.value,
                })
            })
            .collect();
        let Some(last) = messages.last() else {
            return Ok(());
        };
        let next = match last {
            crate::decode::Decoded::Row(row) => row.offset + 1,
            crate::decode::Decoded::Reject(reject) => reject.offset + 1,
        };
        self.send(Chunk {
            partition: self.partition,
            from: self.next,
            next,
            messages,
        })
        .await
    }

    /// The next offset is no longer (or not yet) in the partition. Before the earliest one:
    /// retention deleted messages we never read; say how many, count them, and go on from
    /// the earliest. Past the end (the topic was deleted and created again): go on from the
    /// earliest too, loudly.
    async fn out_of_range(&mut self, client: &PartitionClient) -> Result<()> {
        let earliest = self.shared.get_offset(client, OffsetAt::Earliest).await?;
        let latest = self.shared.get_offset(client, OffsetAt::Latest).await?;
        let (topic, partition, next) = (&self.shared.topic, self.partition, self.next);
        if next < earliest {
            let gap = earliest - next;
            tracing::error!(
                topic = %topic,
                partition,
                lost = gap,
                "offsets {next}..{earliest} were deleted by retention before the sync read \
                 them: {gap} messages lost; continuing at {earliest}"
            );
            self.shared.stats.lost(u64::try_from(gap).unwrap_or(0));
        } else if next > latest {
            tracing::error!(
                topic = %topic,
                partition,
                "the stored next offset {next} is past the end of the partition ({latest}): \
                 was the topic deleted and created again? continuing at {earliest}"
            );
        } else {
            // The range moved between our fetch and our question: just fetch again.
            return Ok(());
        }
        self.send(Chunk {
            partition,
            from: next,
            next: earliest,
            messages: Vec::new(),
        })
        .await
    }

    /// Hands a chunk to the writer, waiting while the writer is behind.
    async fn send(&mut self, chunk: Chunk) -> Result<()> {
        let next = chunk.next;
        self.shared
            .chunks
            .send(ToWriter::Chunk(chunk))
            .await
            .map_err(|_| Error::Task("the writer stopped".into()))?;
        self.next = next;
        Ok(())
    }
}
