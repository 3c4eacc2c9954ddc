-- A topic that is deleted and created again starts its offsets at 0 again: the new topic's
-- events would take the old rows' keys. Each partition's offsets therefore belong to an
-- incarnation, counted by the sync from 0: the sync tells a new incarnation from the one it
-- read by the record just before its stored offset (its fingerprint, kept below), and then
-- reads the new one from its start under the next number. The keys of the stored rows and
-- rejects carry it, so old and new rows live side by side.
--
-- Cost: adding the columns is instant (a constant default); replacing the primary keys
-- rebuilds one unique index per table, holding an ACCESS EXCLUSIVE lock on it meanwhile
-- (measured: 2.7 s for a million rows of website_status on a 2-core machine).

ALTER TABLE sync_offsets
    ADD COLUMN incarnation integer NOT NULL DEFAULT 0 CHECK (incarnation >= 0),
    -- A fingerprint of the record at next_offset - 1 (NULL when unknown: nothing read yet
    -- in this incarnation, or the offset jumped past records deleted by retention).
    ADD COLUMN last_fingerprint bigint;

ALTER TABLE website_status
    ADD COLUMN kafka_topic_incarnation integer NOT NULL DEFAULT 0,
    DROP CONSTRAINT website_status_pkey,
    ADD PRIMARY KEY (kafka_topic, kafka_topic_incarnation, kafka_partition_id,
                     kafka_offset_id, website_id);

ALTER TABLE website_status_rejects
    ADD COLUMN kafka_topic_incarnation integer NOT NULL DEFAULT 0,
    DROP CONSTRAINT website_status_rejects_pkey,
    ADD PRIMARY KEY (kafka_topic, kafka_topic_incarnation, kafka_partition_id,
                     kafka_offset_id);
