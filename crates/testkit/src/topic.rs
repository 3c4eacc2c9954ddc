//! A topic of the test's own on the plaintext listener: connecting, creating it, and reading
//! back what is in it.

use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::UnknownTopicHandling;

use crate::{HOW_TO_START, kafka_config};

/// The most one fetch of [`read`] waits: a bound against hanging.
const FETCH_PATIENCE: Duration = Duration::from_secs(20);

/// A record of a topic, with where it was.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key; the checker keys by site id.
    pub key: Option<Vec<u8>>,
    /// Its value; the checker's is an event's JSON.
    pub value: Option<Vec<u8>>,
}

/// A client on the plaintext listener (the topic is only used to build the configuration).
///
/// # Panics
/// When the broker does not answer, with [`HOW_TO_START`].
pub async fn client(topic: &str) -> Client {
    sitemon_core::kafka::connect(&kafka_config(topic))
        .await
        .unwrap_or_else(|e| panic!("{e}: {HOW_TO_START}"))
}

/// `topic` created with `partitions` (one replica), and the client that created it.
///
/// # Panics
/// When the broker does not answer or refuses.
pub async fn create(topic: &str, partitions: i32) -> Client {
    let client = client(topic).await;
    sitemon_core::kafka::create_topic(&client, topic, partitions, 1)
        .await
        .unwrap_or_else(|e| panic!("cannot create the test topic: {e}"));
    client
}

/// Every record of `topic` so far, partition by partition in offset order: each partition is
/// read up to the high watermark its last fetch reported (a reader that waited for the end of
/// a topic still being written would never see it). `None` while the topic does not exist.
///
/// # Panics
/// When the broker does not answer, or a fetch takes longer than 20 s.
pub async fn read(client: &Client, topic: &str) -> Option<Vec<TopicRecord>> {
    let partitions = sitemon_core::kafka::partition_count(client, topic)
        .await
        .unwrap_or_else(|e| panic!("cannot read the metadata of {topic}: {e}"))?;
    let mut out = Vec::new();
    for partition in 0..i32::try_from(partitions).expect("a partition count fits an i32") {
        let partition_client = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let mut offset = 0;
        loop {
            let (records, high_watermark) = tokio::time::timeout(
                FETCH_PATIENCE,
                partition_client.fetch_records(offset, 1..10_000_000, 100),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("a fetch from {topic}/{partition} took over {FETCH_PATIENCE:?}")
            })
            .unwrap_or_else(|e| panic!("cannot fetch from {topic}/{partition}: {e}"));
            for record in records {
                offset = record.offset + 1;
                out.push(TopicRecord {
                    partition,
                    offset: record.offset,
                    key: record.record.key,
                    value: record.record.value,
                });
            }
            if offset >= high_watermark {
                break;
            }
        }
    }
    Some(out)
}
