//! Gathering the readers' chunks into batches of at most `batch_size` messages.
//!
//! A batch is what one transaction stores: rows, rejects, and for each partition it touches
//! the move of the stored offset from where the batch's first chunk was read to the offset
//! after its last message.

use std::collections::BTreeMap;

use crate::decode::{Decoded, Reject, StatusRow};
use crate::offsets::Advance;

/// What a partition reader sends to the writer: the messages of one fetch, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chunk {
    pub(crate) partition: i32,
    /// The offset the reader fetched from: the stored offset must still hold it.
    pub(crate) from: i64,
    /// The offset after the last message (or where the reader jumped to, past a gap).
    pub(crate) next: i64,
    /// In offset order.
    pub(crate) messages: Vec<Decoded>,
}

impl Decoded {
    fn offset(&self) -> i64 {
        match self {
            Self::Row(row) => row.offset,
            Self::Reject(reject) => reject.offset,
        }
    }
}

/// One transaction's worth of messages.
#[derive(Debug)]
pub(crate) struct Batch {
    limit: usize,
    pub(crate) rows: Vec<StatusRow>,
    pub(crate) rejects: Vec<Reject>,
    advances: BTreeMap<i32, Advance>,
}

impl Batch {
    /// An empty batch that holds at most `limit` messages (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            rows: Vec::new(),
            rejects: Vec::new(),
            advances: BTreeMap::new(),
        }
    }

    /// The messages in the batch.
    pub(crate) fn len(&self) -> usize {
        self.rows.len() + self.rejects.len()
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

    /// Adds as much of `chunk` as fits and returns the rest, if any.
    ///
    /// # Panics
    /// In debug builds, when a chunk does not continue where the partition's previous one
    /// ended (a reader bug).
    pub(crate) fn push(&mut self, mut chunk: Chunk) -> Option<Chunk> {
        let room = self.limit.saturating_sub(self.len());
        let rest = if chunk.messages.len() > room {
            let tail = chunk.messages.split_off(room);
            let resume = tail[0].offset();
            let rest = Chunk {
                partition: chunk.partition,
                from: resume,
                next: chunk.next,
                messages: tail,
            };
            chunk.next = resume;
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
        });
        debug_assert_eq!(
            advance.next, chunk.from,
            "chunks of a partition must be contiguous"
        );
        advance.next = chunk.next;
        for message in chunk.messages {
            match message {
                Decoded::Row(row) => self.rows.push(row),
                Decoded::Reject(reject) => self.rejects.push(reject),
            }
        }
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(partition: i32, offset: i64) -> Decoded {
        Decoded::Reject(Reject {
            partition,
            offset,
            key: None,
            payload: None,
            kind: crate::decode::RejectKind::NotJson,
            reason: "test".into(),
        })
    }

    fn chunk(partition: i32, offsets: std::ops::Range<i64>) -> Chunk {
        Chunk {
            partition,
            from: offsets.start,
            next: offsets.end,
            messages: offsets.map(|o| reject(partition, o)).collect(),
        }
    }

    #[test]
    fn splits_a_chunk_at_the_limit() {
        let mut batch = Batch::new(5);
        assert!(batch.push(chunk(0, 10..13)).is_none());
        let rest = batch.push(chunk(1, 0..4)).expect("a rest");
        assert!(batch.is_full());
        assert_eq!((rest.from, rest.next, rest.messages.len()), (2, 4, 2));
        assert_eq!(
            batch.advances(),
            [
                Advance {
                    partition: 0,
                    expected: 10,
                    next: 13
                },
                Advance {
                    partition: 1,
                    expected: 0,
                    next: 2
                },
            ]
        );
        let mut next = Batch::new(5);
        assert!(next.push(rest).is_none());
        assert_eq!(
            next.advances(),
            [Advance {
                partition: 1,
                expected: 2,
                next: 4
            }]
        );
    }

    #[test]
    fn contiguous_chunks_extend_one_advance() {
        let mut batch = Batch::new(100);
        batch.push(chunk(3, 0..2));
        batch.push(chunk(3, 2..7));
        assert_eq!(batch.len(), 7);
        assert_eq!(
            batch.advances(),
            [Advance {
                partition: 3,
                expected: 0,
                next: 7
            }]
        );
    }

    #[test]
    fn a_jump_past_a_gap_is_stored_without_messages() {
        let mut batch = Batch::new(10);
        assert!(batch.is_empty());
        batch.push(Chunk {
            partition: 0,
            from: 5,
            next: 90,
            messages: Vec::new(),
        });
        assert!(!batch.is_empty());
        assert_eq!(batch.len(), 0);
        assert_eq!(
            batch.advances(),
            [Advance {
                partition: 0,
                expected: 5,
                next: 90
            }]
        );
        batch.push(Chunk {
            partition: 1,
            from: 4,
            next: 4,
            messages: Vec::new(),
        });
        assert_eq!(batch.advances().len(), 1, "nothing moved on partition 1");
    }
}
