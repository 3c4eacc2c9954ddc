-- sitemon's schema. Table and column names follow the original Python prototype so that
-- existing queries keep working; types are fixed where the original's were too small.

-- The sites to check.
CREATE TABLE websites (
    id             serial PRIMARY KEY,
    url            varchar(2048) NOT NULL UNIQUE,
    -- Seconds between the starts of two checks of this site.
    check_interval integer NOT NULL DEFAULT 5
                   CONSTRAINT websites_check_interval_range CHECK (check_interval BETWEEN 1 AND 86400),
    -- A regex (Rust `regex` syntax) the body must match for the site to be up; NULL = none.
    up_regex       text
);

-- One row per check event consumed from Kafka.
CREATE TABLE website_status (
    kafka_topic        varchar(256) NOT NULL,
    kafka_partition_id integer      NOT NULL,
    -- Kafka offsets are 64-bit; the original's INTEGER overflowed after 2^31 messages.
    kafka_offset_id    bigint       NOT NULL,
    website_id         integer      NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    -- When the check started.
    timestamp_utc      timestamptz  NOT NULL,
    -- The whole check event as the checker published it.
    request_info       jsonb        NOT NULL,
    -- Made by the checker for every check: a produce that Kafka retried under a new offset
    -- carries the same check_id, so it is stored once.
    check_id           uuid UNIQUE,
    is_up              boolean,
    status_code        smallint,
    response_time_ms   double precision,
    error_kind         text,
    location           text,
    PRIMARY KEY (kafka_topic, kafka_partition_id, kafka_offset_id, website_id)
);

-- "The latest checks of one site", the query behind every report.
CREATE INDEX website_status_site_time ON website_status (website_id, timestamp_utc DESC);

-- Messages the sync could not turn into a website_status row, kept with their raw bytes so
-- that nothing a checker published is silently lost.
CREATE TABLE website_status_rejects (
    kafka_topic        varchar(256) NOT NULL,
    kafka_partition_id integer      NOT NULL,
    kafka_offset_id    bigint       NOT NULL,
    message_key        bytea,
    payload            bytea,
    reason             text         NOT NULL,
    received_at        timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition_id, kafka_offset_id)
);

-- The next offset the sync will read from each partition. It is written in the same
-- transaction as the rows it covers, which is what makes the sync exactly-once.
CREATE TABLE sync_offsets (
    kafka_topic        varchar(256) NOT NULL,
    kafka_partition_id integer      NOT NULL,
    next_offset        bigint       NOT NULL CHECK (next_offset >= 0),
    updated_at         timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition_id)
);
