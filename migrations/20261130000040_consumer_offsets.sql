-- The exactly-once consumer serves more than the sync: the alert service reads the same
-- topic and keeps its own offsets, in the same transaction as its own state. Each stored
-- position therefore belongs to a consumer (`sync`, `alert`); the existing rows are the
-- sync's.
--
-- Cost: adding the column is instant (a constant default); the new primary key rebuilds one
-- small index (a row per partition).

ALTER TABLE sync_offsets
    ADD COLUMN consumer text NOT NULL DEFAULT 'sync'
        CHECK (consumer ~ '^[a-z][a-z0-9_-]{0,31}$'),
    DROP CONSTRAINT sync_offsets_pkey,
    ADD PRIMARY KEY (consumer, kafka_topic, kafka_partition_id);
