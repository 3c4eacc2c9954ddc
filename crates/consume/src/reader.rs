//! Reading the topic: one fetch loop per partition this worker holds the lease of.
//!
//! A reader fetches from its partition's next offset, decodes what it got and sends it to
//! the writer as one [`Chunk`] over a bounded channel: when PostgreSQL is slow the channel
//! fills, the send waits, and the reader stops fetching. Kafka errors (a broker restart)
//! are retried here with backoff and jitter, from the same offset; they never reach the
//! writer. The session (`session.rs`) starts a reader when it takes a partition's lease
//! and stops it before giving the lease away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::record::{Record, RecordAndOffset};
use sitemon_core::retry::{self, Retry};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch::{Chunk, Entry};
use super::error::{Error, Result};
use super::offsets::{self, Position};
use super::stats::Stats;
use super::writer::ToWriter;
use super::{Message, RETRY, Sink, StartFrom, fingerprint};

/// How long one Kafka request may take, retries by rskafka included.
pub(crate) const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes one fetch asks for: bounds the memory of a chunk.
const FETCH_MAX_BYTES: i32 = 1 << 20;
/// How long the broker may hold the fetch that looks again at one record already read.
const VERIFY_MAX_WAIT_MS: i32 = 500;

/// What every reader of one session shares.
#[derive(Debug)]
pub(crate) struct Readers<S: Sink> {
    pub(crate) client: Arc<Client>,
    pub(crate) pool: PgPool,
    /// The consumer's name: whose stored offsets these are.
    pub(crate) consumer: String,
    pub(crate) topic: String,
    pub(crate) sink: Arc<S>,
    /// The writers' channels: a partition's chunks go to writer `partition % writers`.
    pub(crate) chunks: Vec<mpsc::Sender<ToWriter<S::Item>>>,
    pub(crate) stats: Arc<Stats>,
    /// The last reader started: each reader's chunks carry its number, so that the writer
    /// can tell a restarted reader's chunks from its predecessor's.
    pub(crate) generations: Arc<AtomicU64>,
    /// The broker holds a fetch until this much arrived (`ConsumerConfig::fetch_min_bytes`)...
    pub(crate) fetch_min_bytes: usize,
    /// ...or this much time passed (`ConsumerConfig::fetch_max_wait`, under [`KAFKA_TIMEOUT`]).
    pub(crate) fetch_max_wait: Duration,
}

impl<S: Sink> Clone for Readers<S> {
    fn clone(&self) -> Self {
        Self {
            client: Arc::clone(&self.client),
            pool: self.pool.clone(),
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
            sink: Arc::clone(&self.sink),
            chunks: self.chunks.clone(),
            stats: Arc::clone(&self.stats),
            generations: Arc::clone(&self.generations),
            fetch_min_bytes: self.fetch_min_bytes,
            fetch_max_wait: self.fetch_max_wait,
        }
    }
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

impl<S: Sink> Readers<S> {
    /// Starts a reader for `partition` at its stored offset; a partition without one starts
    /// at `start` (resolved now and stored, so that a restart agrees). Call it only with the
    /// partition's lease held, so that the stored offset is the last one its previous owner
    /// committed.
    pub(crate) async fn start(&self, partition: i32, start: StartFrom) -> Result<RunningReader> {
        let stored = offsets::load_one(&self.pool, &self.consumer, &self.topic, partition).await?;
        let stored = match stored {
            Some(stored) => stored,
            None => {
                let client = self.partition_client(partition).await?;
                let at = match start {
                    StartFrom::Earliest => OffsetAt::Earliest,
                    StartFrom::Latest => OffsetAt::Latest,
                };
                let offset = self.get_offset(&client, at).await?;
                offsets::init(&self.pool, &self.consumer, &self.topic, partition, offset).await?
            }
        };
        self.stats.stored(partition, stored.next.offset);
        tracing::info!(
            consumer = %self.consumer,
            topic = %self.topic,
            partition,
            next_offset = stored.next.offset,
            incarnation = stored.next.incarnation,
            "reading partition"
        );
        let stop = CancellationToken::new();
        let reader = Reader {
            shared: self.clone(),
            partition,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            fetching: format!("Kafka: fetch from {}/{partition}", self.topic),
            next: stored.next,
            fingerprint: stored.fingerprint,
            verified: false,
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
struct Reader<S: Sink> {
    shared: Readers<S>,
    partition: i32,
    /// This reader's number among the readers of the session.
    generation: u64,
    /// What a fetch is called when it times out (made once, not at every fetch).
    fetching: String,
    /// The next position to fetch.
    next: Position,
    /// The fingerprint of the record before `next`, when known.
    fingerprint: Option<i64>,
    /// Whether the record before `next` was found where it was read, since the reader
    /// started or last failed: until then the topic may be a new incarnation.
    verified: bool,
    /// The waits after failures in a row.
    retry: Retry,
    /// Cancelled when the partition is given away or the session ends.
    stop: CancellationToken,
}

impl<S: Sink> Reader<S> {
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
                    // The topic may have been deleted and created again meanwhile.
                    self.verified = false;
                    let wait = self.retry.next_wait().unwrap_or(RETRY.max);
                    tracing::warn!(
                        partition = self.partition,
                        "{e}; retrying from offset {} in {wait:?}",
                        self.next.offset
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
        if !self.verified {
            self.verify(client).await?;
        }
        let (records, high_watermark) = match self.fetch(client, self.next.offset, true).await? {
            Ok(fetched) => fetched,
            Err(OutOfRange) => return self.out_of_range(client).await,
        };
        self.shared
            .stats
            .high_watermark(self.partition, high_watermark);
        let incarnation = self.next.incarnation;
        let sink = &self.shared.sink;
        let messages: Vec<_> = records
            .into_iter()
            .filter(|r| r.offset >= self.next.offset)
            .map(|r| {
                let record = r.record;
                let fingerprint = record_fingerprint(&record);
                let item = sink.decode(Message {
                    partition: self.partition,
                    incarnation,
                    offset: r.offset,
                    fingerprint,
                    key: record.key,
                    value: record.value,
                });
                Entry {
                    partition: self.partition,
                    position: Position {
                        incarnation,
                        offset: r.offset,
                    },
                    fingerprint,
                    item,
                }
            })
            .collect();
        let Some(last) = messages.last() else {
            return Ok(());
        };
        let (next, fingerprint) = (last.position.offset + 1, last.fingerprint);
        self.send(Chunk {
            partition: self.partition,
            from: self.next,
            next: Position {
                incarnation,
                offset: next,
            },
            fingerprint: Some(fingerprint),
            messages,
        })
        .await
    }

    /// One fetch from `offset`: the records and the high watermark, or [`OutOfRange`].
    /// `gather`: the broker holds the fetch until `fetch_min_bytes` are there or
    /// `fetch_max_wait` passed; otherwise it answers with the first record there.
    async fn fetch(
        &self,
        client: &PartitionClient,
        offset: i64,
        gather: bool,
    ) -> Result<Result<(Vec<RecordAndOffset>, i64), OutOfRange>> {
        let (min_bytes, max_wait_ms) = if gather {
            let shared = &self.shared;
            let min_bytes = i32::try_from(shared.fetch_min_bytes).unwrap_or(FETCH_MAX_BYTES);
            let max_wait_ms = i32::try_from(shared.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
            (min_bytes.clamp(1, FETCH_MAX_BYTES - 1), max_wait_ms)
        } else {
            (1, VERIFY_MAX_WAIT_MS)
        };
        let fetch = client.fetch_records(offset, min_bytes..FETCH_MAX_BYTES, max_wait_ms);
        let fetched = retry::timeout(&self.fetching, KAFKA_TIMEOUT, async {
            Ok::<_, Error>(fetch.await)
        })
        .await?;
        match fetched {
            Ok(fetched) => Ok(Ok(fetched)),
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => Ok(Err(OutOfRange)),
            Err(source) => Err(Error::Kafka {
                operation: "fetch from",
                topic: self.shared.topic.clone(),
                partition: self.partition,
                source: Box::new(source),
            }),
        }
    }

    /// Looks again at the record before `next`: when it is past the partition's end, or
    /// another record stands in its place, the topic was deleted and created again since it
    /// was read, and the reader moves to the new incarnation. A record deleted by retention
    /// cannot be compared; the partition is then taken to be the same.
    async fn verify(&mut self, client: &PartitionClient) -> Result<()> {
        let before = self.next.offset - 1;
        let (Some(expected), true) = (self.fingerprint, before >= 0) else {
            self.verified = true;
            return Ok(());
        };
        let found = match self.fetch(client, before, false).await? {
            Ok((records, _)) => records
                .into_iter()
                .find(|r| r.offset == before)
                .map(|r| record_fingerprint(&r.record)),
            Err(OutOfRange) => {
                let earliest = self.shared.get_offset(client, OffsetAt::Earliest).await?;
                if before < earliest {
                    self.verified = true;
                    return Ok(());
                }
                None
            }
        };
        match found {
            Some(actual) if actual == expected => {
                self.verified = true;
                Ok(())
            }
            Some(_) => {
                self.new_incarnation(client, "another record stands at the stored offset")
                    .await
            }
            None => {
                self.new_incarnation(client, "the stored offset is past the partition's end")
                    .await
            }
        }
    }

    /// The topic is a new one: moves to the start of the next incarnation (through the
    /// writer, after everything read before), and reads it from there.
    async fn new_incarnation(&mut self, client: &PartitionClient, why: &str) -> Result<()> {
        let earliest = self.shared.get_offset(client, OffsetAt::Earliest).await?;
        let next = Position {
            incarnation: self.next.incarnation + 1,
            offset: earliest,
        };
        tracing::error!(
            topic = %self.shared.topic,
            partition = self.partition,
            "{why} ({}): the topic was deleted and created again; reading the new one from \
             offset {earliest} as topic incarnation {} (the rows read before keep theirs)",
            self.next.offset,
            next.incarnation
        );
        self.send(Chunk {
            partition: self.partition,
            from: self.next,
            next,
            fingerprint: None,
            messages: Vec::new(),
        })
        .await?;
        self.verified = true;
        Ok(())
    }

    /// The next offset is no longer (or not yet) in the partition. Before the earliest one:
    /// retention deleted messages we never read; say how many, count them, and go on from
    /// the earliest. Past the end: the topic was deleted and created again.
    async fn out_of_range(&mut self, client: &PartitionClient) -> Result<()> {
        let earliest = self.shared.get_offset(client, OffsetAt::Earliest).await?;
        let latest = self.shared.get_offset(client, OffsetAt::Latest).await?;
        let (topic, partition, next) = (&self.shared.topic, self.partition, self.next.offset);
        if next < earliest {
            let gap = earliest - next;
            tracing::error!(
                topic = %topic,
                partition,
                lost = gap,
                "offsets {next}..{earliest} were deleted by retention before they were read \
                 (by {consumer}): {gap} messages lost; continuing at {earliest}",
                consumer = self.shared.consumer
            );
            self.shared.stats.lost(u64::try_from(gap).unwrap_or(0));
            self.send(Chunk {
                partition,
                from: self.next,
                next: Position {
                    incarnation: self.next.incarnation,
                    offset: earliest,
                },
                fingerprint: None,
                messages: Vec::new(),
            })
            .await
        } else if next > latest {
            self.new_incarnation(client, "the next offset is past the partition's end")
                .await
        } else {
            // The range moved between our fetch and our question: just fetch again.
            Ok(())
        }
    }

    /// Hands a chunk to the partition's writer, waiting while the writer is behind.
    async fn send(&mut self, chunk: Chunk<S::Item>) -> Result<()> {
        let (next, fingerprint) = (chunk.next, chunk.fingerprint);
        let writers = self.shared.chunks.len().max(1);
        let writer = usize::try_from(self.partition).unwrap_or(0) % writers;
        self.shared.chunks[writer]
            .send(ToWriter::Chunk(chunk, self.generation))
            .await
            .map_err(|_| Error::Task("the writer stopped".into()))?;
        self.next = next;
        self.fingerprint = fingerprint;
        Ok(())
    }
}

/// [`fingerprint`] of a record as fetched.
fn record_fingerprint(record: &Record) -> i64 {
    fingerprint(
        record.key.as_deref(),
        record.value.as_deref(),
        record.timestamp.timestamp_millis(),
    )
}

/// A fetch's offset is not in the partition (deleted by retention, or past its end).
#[derive(Debug)]
struct OutOfRange;
