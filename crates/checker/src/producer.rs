//! Publishing the events: one lane per partition, each producing batches straight through
//! rskafka's `PartitionClient`, from a bounded buffer that survives broker outages.
//!
//! A check never waits for Kafka: [`Producer::send`] puts the event in the buffer and
//! returns. Each partition's lane waits until its oldest event has lingered for `linger`
//! (so that the events of that time travel together), takes the oldest events of its
//! partition (as many as fit one batch), produces them as one request and waits for the
//! outcome. One batch in flight per partition keeps a site's events in order. A request costs
//! the broker much the same whatever it carries, so the linger sets the broker's load: at
//! 400 checks/s over six partitions the old 10 ms sent a request per 1.2 events, 200 ms sends
//! one per ~14 (README, "Cost per check"). A lane does not linger while the buffer is half
//! full, nor for events that waited already (a retried batch, a backlog), nor on stop.
//!
//! On failure the batch goes back to the front of the buffer and the lane backs off with
//! jitter; the events keep their `check_id`, so a batch Kafka stored although we saw an error
//! is recognised as a duplicate by the sync. When the buffer is full the oldest event of all
//! is dropped and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use sitemon_core::CheckEvent;
use sitemon_core::retry::{self, Backoff};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Compression;
use crate::partitioner::partition_for_key;
use crate::stats::{Stats, gauge_value};

/// How long one produce (a whole batch, the client's own retries included) may take.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long opening a partition's connection may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest pause between two attempts of a failing lane.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// While Kafka keeps failing, a lane says so at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The producer's settings.
#[derive(Debug, Clone)]
pub(crate) struct ProducerSettings {
    pub(crate) topic: String,
    pub(crate) capacity: usize,
    pub(crate) linger: Duration,
    pub(crate) compression: Compression,
    pub(crate) max_batch_bytes: usize,
}

/// An event waiting for Kafka.
#[derive(Debug)]
struct Pending {
    /// Order of arrival, to find the oldest event across partitions.
    seq: u64,
    /// When it arrived: its lane sends it once it has lingered long enough.
    arrived: Instant,
    record: Record,
}

#[derive(Debug, Default)]
struct Buffer {
    lanes: Vec<VecDeque<Pending>>,
    /// Events in the buffer plus those in flight.
    total: usize,
    next_seq: u64,
}

#[derive(Debug)]
struct Shared {
    settings: ProducerSettings,
    buffer: Mutex<Buffer>,
    wake: Mutex<Vec<Arc<Notify>>>,
    partitions: AtomicUsize,
    stats: Arc<Stats>,
}

/// The handle checks publish through; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Producer {
    shared: Arc<Shared>,
}

/// Runs the lanes; [`Lanes::close`] flushes them.
#[derive(Debug)]
pub(crate) struct Lanes {
    shared: Arc<Shared>,
    client: Arc<Client>,
    draining: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Producer {
    /// Starts one lane per partition of the topic.
    pub(crate) fn start(
        client: Arc<Client>,
        partitions: usize,
        settings: ProducerSettings,
        stats: Arc<Stats>,
    ) -> (Self, Arc<Lanes>) {
        let shared = Arc::new(Shared {
            settings,
            buffer: Mutex::new(Buffer::default()),
            wake: Mutex::new(Vec::new()),
            partitions: AtomicUsize::new(0),
            stats,
        });
        let lanes = Arc::new(Lanes {
            shared: Arc::clone(&shared),
            client,
            draining: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        lanes.resize(partitions);
        (Self { shared }, lanes)
    }

    /// Queues an event for its partition; never waits.
    pub(crate) fn send(&self, event: &CheckEvent) {
        let key = event.kafka_key();
        let timestamp = rskafka::chrono::DateTime::from_timestamp(
            event.checked_at.unix_timestamp(),
            event.checked_at.nanosecond(),
        )
        .unwrap_or_default();
        let record = Record {
            key: Some(key),
            value: Some(event.to_json()),
            headers: Default::default(),
            timestamp,
        };
        let mut buffer = self.shared.lock_buffer();
        // Under the lock: a change of the partition count re-spreads the buffer under it too.
        let partition = self.shared.lane_of(&record);
        let seq = buffer.next_seq;
        buffer.next_seq += 1;
        buffer.lanes[partition].push_back(Pending {
            seq,
            arrived: Instant::now(),
            record,
        });
        buffer.total += 1;
        let dropped = buffer.enforce(self.shared.settings.capacity);
        self.shared.publish(&buffer);
        let half_full = buffer.half_full(self.shared.settings.capacity);
        drop(buffer);
        self.shared.count_dropped(dropped);
        if half_full {
            // Every lane stops lingering: sent now rather than dropped later.
            self.shared.wake_all();
        } else {
            self.shared.wake(partition);
        }
    }

    /// Events waiting or in flight.
    pub(crate) fn buffered(&self) -> usize {
        self.shared.lock_buffer().total
    }

    /// The partition count events are spread over now.
    pub(crate) fn partitions(&self) -> usize {
        self.shared.partitions.load(Ordering::Acquire)
    }
}

impl Buffer {
    /// Drops the oldest events until at most `capacity` are held; returns how many.
    fn enforce(&mut self, capacity: usize) -> usize {
        let mut dropped = 0;
        while self.total > capacity {
            let oldest = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(i, lane)| lane.front().map(|p| (p.seq, i)))
                .min();
            let Some((_, lane)) = oldest else {
                break; // the rest is in flight
            };
            self.lanes[lane].pop_front();
            self.total -= 1;
            dropped += 1;
        }
        dropped
    }

    /// Spreads every waiting event again over the first `partitions` lanes, by its key, in
    /// the order they arrived.
    fn respread(&mut self, partitions: usize) {
        let mut waiting: Vec<Pending> = self.lanes.iter_mut().flat_map(|q| q.drain(..)).collect();
        waiting.sort_unstable_by_key(|p| p.seq);
        for pending in waiting {
            self.lanes[lane_for(&pending.record, partitions)].push_back(pending);
        }
    }

    /// Whether half the capacity is taken (waiting or in flight): the lanes stop lingering.
    fn half_full(&self, capacity: usize) -> bool {
        self.total.saturating_mul(2) >= capacity
    }

    /// When the oldest event waiting in `lane` arrived.
    fn oldest(&self, lane: usize) -> Option<Instant> {
        self.lanes[lane].front().map(|p| p.arrived)
    }

    /// The oldest events of `lane` that fit one batch of `max_bytes`.
    fn take(&mut self, lane: usize, max_bytes: usize) -> Vec<Pending> {
        let queue = &mut self.lanes[lane];
        let mut bytes = 0;
        let mut count = 0;
        for pending in queue.iter() {
            let size = pending.record.approximate_size();
            if count > 0 && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            count += 1;
        }
        queue.drain(..count).collect()
    }
}

impl Shared {
    fn lock_buffer(&self) -> MutexGuard<'_, Buffer> {
        // A panic while holding the lock cannot leave the buffer inconsistent in a way that
        // matters more than stopping would; keep going with what is there.
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn half_full(&self) -> bool {
        self.lock_buffer().half_full(self.settings.capacity)
    }

    fn wake_all(&self) {
        let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        for notify in wake.iter() {
            notify.notify_one();
        }
    }

    fn wake(&self, lane: usize) {
        let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = wake.get(lane) {
            notify.notify_one();
        }
    }

    fn count_dropped(&self, dropped: usize) {
        if dropped == 0 {
            return;
        }
        let before = self.stats.dropped.inc_by(dropped as u64);
        // The first drop, then every 1,000th: enough to see it in the log without flooding.
        if before == 0 || (before + dropped as u64) / 1000 > before / 1000 {
            tracing::warn!(
                dropped_total = before + dropped as u64,
                capacity = self.settings.capacity,
                "the event buffer is full (Kafka is not taking events): dropped the oldest"
            );
        }
    }

    /// Puts a batch that failed back in front of its lane: the lane of each event under the
    /// partition count of now, which is `lane` unless the count changed meanwhile.
    fn requeue(&self, lane: usize, batch: Vec<Pending>) {
        let mut buffer = self.lock_buffer();
        let mut woken = vec![lane];
        for pending in batch.into_iter().rev() {
            let target = self.lane_of(&pending.record);
            if !woken.contains(&target) {
                woken.push(target);
            }
            buffer.lanes[target].push_front(pending);
        }
        let dropped = buffer.enforce(self.settings.capacity);
        self.publish(&buffer);
        drop(buffer);
        self.count_dropped(dropped);
        for lane in woken {
            self.wake(lane);
        }
    }

    /// The lane (partition) of a record under the current partition count (read with the
    /// buffer locked: [`Lanes::resize`] changes it and re-spreads the buffer under the lock).
    fn lane_of(&self, record: &Record) -> usize {
        lane_for(record, self.partitions.load(Ordering::Acquire))
    }

    fn delivered(&self, count: usize) {
        self.settled(count);
        Stats::add(&self.stats.produced, count as u64);
    }

    /// `count` events left the buffer: delivered, or dropped.
    fn settled(&self, count: usize) {
        let mut buffer = self.lock_buffer();
        buffer.total -= count;
        self.publish(&buffer);
    }

    /// Publishes the events waiting or in flight (`sitemon_events_buffered`); called with
    /// the buffer locked, so that the gauge follows the changes in their order.
    fn publish(&self, buffer: &Buffer) {
        self.stats.buffered.set(gauge_value(buffer.total));
    }
}

impl Lanes {
    /// Spreads the events over `partitions` partitions from now on: the topic grew, or was
    /// deleted and created again with another count. Lanes are added as needed and never
    /// removed (a lane beyond the count just stays empty); the events waiting are spread
    /// again by the new count, in their order, so that a site's events stay in order in
    /// its new partition. (A batch in flight at that moment goes where it was going; if that
    /// fails, it comes back to its new lane, ahead of the site's later events.)
    pub(crate) fn resize(self: &Arc<Self>, partitions: usize) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut wake = self.shared.wake.lock().unwrap_or_else(|p| p.into_inner());
        let mut buffer = self.shared.lock_buffer();
        let current = self.shared.partitions.load(Ordering::Acquire);
        if partitions == current || partitions == 0 {
            return;
        }
        for partition in buffer.lanes.len()..partitions {
            buffer.lanes.push(VecDeque::new());
            let notify = Arc::new(Notify::new());
            wake.push(Arc::clone(&notify));
            let lane = Arc::clone(self);
            tasks.push(tokio::spawn(
                async move { lane.run(partition, notify).await },
            ));
        }
        self.shared.partitions.store(partitions, Ordering::Release);
        if current == 0 {
            return;
        }
        buffer.respread(partitions);
        drop(buffer);
        for notify in wake.iter().take(partitions) {
            notify.notify_one();
        }
        tracing::info!(
            topic = %self.shared.settings.topic,
            from = current,
            to = partitions,
            "the topic's partition count changed; events are spread over the new count"
        );
    }

    /// Delivers what is buffered, for at most `deadline`; returns the events left undelivered.
    pub(crate) async fn close(&self, deadline: Duration) -> usize {
        self.draining.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            for abort in aborts {
                abort.abort();
            }
        }
        self.shared.lock_buffer().total
    }

    async fn run(&self, lane: usize, notify: Arc<Notify>) {
        let shared = &self.shared;
        let settings = &shared.settings;
        let partition = lane as i32;
        let mut producer: Option<Arc<PartitionClient>> = None;
        let mut retry = retry_backoff().start();
        let mut failing_since: Option<Instant> = None;
        let mut last_warning: Option<Instant> = None;
        loop {
            let batch = loop {
                let oldest = shared.lock_buffer().oldest(lane);
                let Some(arrived) = oldest else {
                    if self.draining.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        () = notify.notified() => {}
                        () = self.draining.cancelled() => {}
                    }
                    continue;
                };
                // Let the events of the next `linger` join the oldest; not when stopping (the
                // rest goes at once), nor for an event that waited already (a retried batch,
                // a backlog), nor once the buffer is half full (lingering must not drop).
                let until = arrived + settings.linger;
                while !self.draining.is_cancelled() && !shared.half_full() {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        () = notify.notified() => {}
                        () = self.draining.cancelled() => {}
                    }
                }
                let batch = shared.lock_buffer().take(lane, settings.max_batch_bytes);
                if !batch.is_empty() {
                    break batch;
                }
            };
            let count = batch.len();
            if let [single] = batch.as_slice() {
                let size = single.record.approximate_size();
                if size > settings.max_batch_bytes {
                    tracing::error!(
                        partition,
                        size,
                        max_batch_bytes = settings.max_batch_bytes,
                        "an event is larger than a whole batch: dropped"
                    );
                    shared.settled(1);
                    shared.count_dropped(1);
                    continue;
                }
            }
            let outcome = match &producer {
                Some(client) => produce(client, settings, &shared.stats, &batch).await,
                None => match self.open(partition).await {
                    Ok(opened) => {
                        let outcome = produce(&opened, settings, &shared.stats, &batch).await;
                        producer = Some(opened);
                        outcome
                    }
                    Err(reason) => Err(reason),
                },
            };
            match outcome {
                Ok(()) => {
                    shared.delivered(count);
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            partition,
                            after_s = since.elapsed().as_secs(),
                            "Kafka takes events again"
                        );
                    }
                    retry.reset();
                }
                Err(reason) => {
                    Stats::add(&shared.stats.produce_failures, 1);
                    let now = Instant::now();
                    failing_since.get_or_insert(now);
                    if last_warning.is_none_or(|at| now - at >= WARN_EVERY) {
                        last_warning = Some(now);
                        tracing::warn!(
                            topic = %settings.topic,
                            partition,
                            buffered = shared.lock_buffer().total,
                            "cannot produce to Kafka ({reason}); events wait in the buffer"
                        );
                    }
                    // A fresh connection for the next attempt.
                    producer = None;
                    shared.requeue(lane, batch);
                    // No deadline: a lane retries for as long as it runs.
                    let wait = retry.next_wait().unwrap_or(RETRY_MAX);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn open(&self, partition: i32) -> Result<Arc<PartitionClient>, String> {
        let settings = &self.shared.settings;
        let open = async {
            self.client
                .partition_client(&settings.topic, partition, UnknownTopicHandling::Retry)
                .await
                .map_err(|source| sitemon_core::Error::Kafka {
                    operation: "open a partition of",
                    topic: settings.topic.clone(),
                    source: Box::new(source),
                })
        };
        let client = retry::timeout(
            &format!("opening partition {partition} of topic {}", settings.topic),
            OPEN_TIMEOUT,
            open,
        )
        .await
        .map_err(|e| crate::error::chain(&e))?;
        Ok(Arc::new(client))
    }
}

/// How a failing lane waits between attempts: from [`RETRY_MIN`], doubling up to
/// [`RETRY_MAX`], give or take a quarter so that lanes (and checkers) do not retry in step.
fn retry_backoff() -> Backoff {
    Backoff::new(RETRY_MIN, RETRY_MAX)
}

/// Produces `batch` as one request (one record batch, compressed as the settings say): the
/// records keep their order in the partition.
async fn produce(
    client: &PartitionClient,
    settings: &ProducerSettings,
    stats: &Stats,
    batch: &[Pending],
) -> Result<(), String> {
    let records = batch.iter().map(|p| p.record.clone()).collect();
    Stats::add(&stats.produce_requests, 1);
    let produce = client.produce(records, settings.compression.into());
    match tokio::time::timeout(PRODUCE_TIMEOUT, produce).await {
        Err(_) => Err(format!("no answer within {PRODUCE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(crate::error::chain(&e)),
        Ok(Ok(_offsets)) => Ok(()),
    }
}

/// The lane (partition) of a record among `partitions`: Kafka's partitioner over its key.
fn lane_for(record: &Record, partitions: usize) -> usize {
    partition_for_key(record.key.as_deref().unwrap_or_default(), partitions) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64, bytes: usize) -> Pending {
        Pending {
            seq,
            arrived: Instant::now(),
            record: Record {
                key: Some(b"1".to_vec()),
                value: Some(vec![b'x'; bytes]),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::default(),
            },
        }
    }

    fn buffer(lanes: &[&[u64]]) -> Buffer {
        let mut buffer = Buffer::default();
        for seqs in lanes {
            buffer
                .lanes
                .push(seqs.iter().map(|&s| pending(s, 10)).collect());
            buffer.total += seqs.len();
        }
        buffer
    }

    fn seqs(queue: &VecDeque<Pending>) -> Vec<u64> {
        queue.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_across_partitions() {
        let mut buffer = buffer(&[&[2, 5], &[1, 3, 4], &[]]);
        assert_eq!(buffer.enforce(3), 2);
        assert_eq!(seqs(&buffer.lanes[0]), [5]);
        assert_eq!(seqs(&buffer.lanes[1]), [3, 4]);
        assert_eq!(buffer.total, 3);
        assert_eq!(buffer.enforce(3), 0);
    }

    #[test]
    fn a_new_partition_count_spreads_the_waiting_events_by_key_in_order() {
        let keyed = |seq: u64, site: u32| {
            let mut p = pending(seq, 10);
            p.record.key = Some(site.to_string().into_bytes());
            p
        };
        // Six partitions' worth of events of 40 sites, arrival order interleaved.
        let mut buffer = Buffer {
            lanes: (0..6).map(|_| VecDeque::new()).collect(),
            ..Buffer::default()
        };
        for seq in 0..400_u64 {
            let site = (seq * 7 % 40) as u32;
            let lane = partition_for_key(site.to_string().as_bytes(), 6) as usize;
            buffer.lanes[lane].push_back(keyed(seq, site));
        }
        buffer.respread(3);
        assert!(
            buffer.lanes[3..].iter().all(VecDeque::is_empty),
            "lanes past the count empty"
        );
        let mut seen = 0;
        for (lane, queue) in buffer.lanes.iter().enumerate().take(3) {
            let order = seqs(queue);
            assert!(order.is_sorted(), "lane {lane} keeps the arrival order");
            for p in queue {
                let key = p.record.key.as_deref().expect("keyed");
                assert_eq!(partition_for_key(key, 3) as usize, lane, "by the new count");
            }
            seen += queue.len();
        }
        assert_eq!(seen, 400, "nothing lost");
    }

    #[test]
    fn batches_fit_the_aggregator_and_keep_order() {
        let mut buffer = buffer(&[&[1, 2, 3, 4, 5]]);
        let size = buffer.lanes[0][0].record.approximate_size();
        let batch = buffer.take(0, 2 * size);
        assert_eq!(batch.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(seqs(&buffer.lanes[0]), [3, 4, 5]);
        // A record bigger than a batch still goes, alone.
        let batch = buffer.take(0, 1);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn a_failing_lane_waits_longer_each_time_give_or_take_a_quarter() {
        let mut retry = retry_backoff().start();
        let mut base = RETRY_MIN;
        for _ in 0..1000 {
            let wait = retry.next_wait().expect("no deadline");
            assert!(
                wait >= base.mul_f64(0.75) && wait <= base.mul_f64(1.25),
                "{wait:?} is not {base:?} give or take a quarter"
            );
            base = (base * 2).min(RETRY_MAX);
        }
    }
}
