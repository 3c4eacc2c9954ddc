//! Gathering the readers' chunks into batches of at most `batch_size` messages.
//!
//! A batch is what one transaction stores: the sink's items, and for each partition it
//! touches the move of the stored offset from where the batch's first chunk was read to the
//! offset after its last message.

use std::collections::BTreeMap;

use super::offsets::{Advance, Position};

/// One message as the sink decoded it, with its place in the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    /// The partition it was read from.
    pub partition: i32,
    /// Its incarnation and offset.
    pub position: Position,
    /// [`super::fingerprint`] of the record.
    pub fingerprint: i64,
    /// What the sink made of it ([`super::Sink::decode`]).
    pub item: T,
}

/// What a partition reader sends to the writer: the messages of one fetch, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chunk<T> {
    pub(crate) partition: i32,
    /// The position the reader fetched from: the stored position must still hold it.
    pub(crate) from: Position,
    /// The position after the last message (or where the reader jumped to: past a gap, or
    /// to the start of the topic's next incarnation).
    pub(crate) next: Position,
    /// The fingerprint of the record before `next`, when known.
    pub(crate) fingerprint: Option<i64>,
    /// In offset order, all of `next`'s incarnation.
    pub(crate) messages: Vec<Entry<T>>,
}

/// One transaction's worth of messages.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    limit: usize,
    pub(crate) entries: Vec<Entry<T>>,
    advances: BTreeMap<i32, Advance>,
}

impl<T> Batch<T> {
    /// An empty batch that holds at most `limit` messages (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            entries: Vec::new(),
            advances: BTreeMap::new(),
        }
    }

    /// The messages in the batch.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is nothing to store, not even an offset that moved past a gap.
    pub(crate) fn is_empty(&self) -> bool {
        self.advances.is_empty()
    }

    /// True when no further message fits.
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.limit
    }

    /// The offset moves to store with the batch.
    pub(crate) fn advances(&self) -> Vec<Advance> {
        self.advances.values().copied().collect()
    }

    /// Leaves out everything of `partition` (its stored offset moved away: its reader starts
    /// again from there).
    pub(crate) fn remove_partition(&mut self, partition: i32) {
        self.entries.retain(|e| e.partition != partition);
        self.advances.remove(&partition);
    }

    /// Adds as much of `chunk` as fits and returns the rest, if any.
    ///
    /// # Panics
    /// In debug builds, when a chunk does not continue where the partition's previous one
    /// ended (a reader bug).
    pub(crate) fn push(&mut self, mut chunk: Chunk<T>) -> Option<Chunk<T>> {
        let room = self.limit.saturating_sub(self.len());
        let rest = if chunk.messages.len() > room {
            let tail = chunk.messages.split_off(room);
            let resume = tail[0].position;
            let rest = Chunk {
                partition: chunk.partition,
                from: resume,
                next: chunk.next,
                fingerprint: chunk.fingerprint,
                messages: tail,
            };
            chunk.next = resume;
            chunk.fingerprint = chunk.messages.last().map(|e| e.fingerprint);
            Some(rest)
        } else {
            None
        };
        if chunk.messages.is_empty() && chunk.from == chunk.next {
            return rest;
        }
        let advance = self.advances.entry(chunk.partition).or_insert(Advance {
            partition: chunk.partition,
            expected: chunk.from,
            next: chunk.from,
            fingerprint: None,
        });
        debug_assert_eq!(
            advance.next, chunk.from,
            "chunks of a partition must be contiguous"
        );
        advance.next = chunk.next;
        advance.fingerprint = chunk.fingerprint;
        self.entries.extend(chunk.messages);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: i32, offset: i64) -> Entry<()> {
        Entry {
            partition,
            position: Position::at(offset),
            fingerprint: offset * 10,
            item: (),
        }
    }

    fn chunk(partition: i32, offsets: std::ops::Range<i64>) -> Chunk<()> {
        Chunk {
            partition,
            from: Position::at(offsets.start),
            next: Position::at(offsets.end),
            fingerprint: Some((offsets.end - 1) * 10),
            messages: offsets.map(|o| entry(partition, o)).collect(),
        }
    }

    fn advance(partition: i32, expected: i64, next: i64, fingerprint: Option<i64>) -> Advance {
        Advance {
            partition,
            expected: Position::at(expected),
            next: Position::at(next),
            fingerprint,
        }
    }

    #[test]
    fn splits_a_chunk_at_the_limit() {
        let mut batch = Batch::<()>::new(5);
        assert!(batch.push(chunk(0, 10..13)).is_none());
        let rest = batch.push(chunk(1, 0..4)).expect("a rest");
        assert!(batch.is_full());
        assert_eq!(
            (rest.from, rest.next, rest.messages.len()),
            (Position::at(2), Position::at(4), 2)
        );
        assert_eq!(
            batch.advances(),
            [advance(0, 10, 13, Some(120)), advance(1, 0, 2, Some(10))],
            "a split batch ends with the fingerprint of its own last message"
        );
        let mut next = Batch::<()>::new(5);
        assert!(next.push(rest).is_none());
        assert_eq!(next.advances(), [advance(1, 2, 4, Some(30))]);
    }

    #[test]
    fn a_partition_is_left_out_whole() {
        let mut batch = Batch::<()>::new(100);
        batch.push(chunk(0, 0..3));
        batch.push(chunk(1, 5..9));
        batch.remove_partition(0);
        assert_eq!(batch.len(), 4);
        assert!(batch.entries.iter().all(|e| e.partition == 1));
        assert_eq!(batch.advances(), [advance(1, 5, 9, Some(80))]);
        batch.remove_partition(1);
        assert!(batch.is_empty());
    }

    #[test]
    fn contiguous_chunks_extend_one_advance() {
        let mut batch = Batch::<()>::new(100);
        batch.push(chunk(3, 0..2));
        batch.push(chunk(3, 2..7));
        assert_eq!(batch.len(), 7);
        assert_eq!(batch.advances(), [advance(3, 0, 7, Some(60))]);
    }

    #[test]
    fn a_jump_past_a_gap_is_stored_without_messages() {
        let mut batch = Batch::<()>::new(10);
        assert!(batch.is_empty());
        batch.push(Chunk {
            partition: 0,
            from: Position::at(5),
            next: Position::at(90),
            fingerprint: None,
            messages: Vec::new(),
        });
        assert!(!batch.is_empty());
        assert_eq!(batch.len(), 0);
        assert_eq!(batch.advances(), [advance(0, 5, 90, None)]);
        batch.push(Chunk {
            partition: 1,
            from: Position::at(4),
            next: Position::at(4),
            fingerprint: Some(1),
            messages: Vec::new(),
        });
        assert_eq!(batch.advances().len(), 1, "nothing moved on partition 1");
    }

    #[test]
    fn a_new_incarnation_moves_the_position_to_its_start() {
        let mut batch = Batch::<()>::new(10);
        batch.push(chunk(0, 5..8));
        let new = Position {
            incarnation: 1,
            offset: 0,
        };
        batch.push(Chunk {
            partition: 0,
            from: Position::at(8),
            next: new,
            fingerprint: None,
            messages: Vec::new(),
        });
        assert_eq!(
            batch.advances(),
            [Advance {
                partition: 0,
                expected: Position::at(5),
                next: new,
                fingerprint: None,
            }]
        );
    }
}
