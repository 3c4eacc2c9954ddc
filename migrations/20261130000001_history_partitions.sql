-- Years of history, kept fast: `website_status` becomes a table partitioned by day, and the
-- sync keeps hourly and daily rollups of it in the same transaction as the rows.
--
-- # Raw history: one partition per UTC day
-- A day is the grain a retention is given in, small enough that dropping one is a quick
-- metadata operation and large enough that a year is 365 partitions (PostgreSQL plans a
-- query over a few hundred partitions without trouble, and prunes those outside its time
-- range). Partitions are named `website_status_pYYYYMMDD`; the sync creates them days
-- ahead and `migrate` creates the first ones (`sitemon_core::history`). An event whose day
-- has no partition (a checker with a broken clock, an event older than the retention)
-- lands in `website_status_default`, which retention never drops.
--
-- # Keys
-- A unique key of a partitioned table must contain the partition column, so both keys
-- gain `timestamp_utc`. Nothing changes for exactly-once: a replayed offset is the same
-- record, so the same check with the same `timestamp_utc`, and it still hits the key; a
-- produce retried under a new offset carries the same event, so the same `check_id` with
-- the same `timestamp_utc`, and it still hits `(check_id, timestamp_utc)`.
--
-- # Moving the old table
-- This migration only renames the old table to `website_status_unpartitioned`; the rows
-- are moved by `sitemon migrate` afterwards, one day per transaction, with progress, and
-- the rollups of each day are computed in the same transaction
-- (`sitemon_core::history::move_unpartitioned`). A move cut short goes on where it stopped.

ALTER TABLE website_status RENAME TO website_status_unpartitioned;
ALTER INDEX website_status_pkey RENAME TO website_status_unpartitioned_pkey;
ALTER INDEX website_status_check_id_key RENAME TO website_status_unpartitioned_check_id_key;
ALTER INDEX website_status_site_time RENAME TO website_status_unpartitioned_site_time;
ALTER TABLE website_status_unpartitioned
    RENAME CONSTRAINT website_status_website_id_fkey
    TO website_status_unpartitioned_website_id_fkey;

-- The columns, in the order of the old table (so `SELECT *` reads the same).
CREATE TABLE website_status (
    kafka_topic             varchar(256)     NOT NULL,
    kafka_partition_id      integer          NOT NULL,
    kafka_offset_id         bigint           NOT NULL,
    website_id              integer          NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    timestamp_utc           timestamptz      NOT NULL,
    request_info            jsonb            NOT NULL,
    check_id                uuid,
    is_up                   boolean,
    status_code             smallint,
    response_time_ms        double precision,
    error_kind              text,
    location                text,
    kafka_topic_incarnation integer          NOT NULL DEFAULT 0,
    PRIMARY KEY (kafka_topic, kafka_topic_incarnation, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc),
    UNIQUE (check_id, timestamp_utc)
) PARTITION BY RANGE (timestamp_utc);

CREATE INDEX website_status_site_time ON website_status (website_id, timestamp_utc DESC)
    INCLUDE (is_up, response_time_ms);

-- "The rows of this time range", the edges of a report's window: rows arrive in about time
-- order, so a BRIN index (a few pages per day) finds them without reading the whole day.
CREATE INDEX website_status_time ON website_status USING brin (timestamp_utc);

CREATE TABLE website_status_default PARTITION OF website_status DEFAULT;

-- # Latency sketches
-- A response time goes to bin `ceil(ln(ms) / ln(γ))` with γ = 1.02 / 0.98: every value of a
-- bin is within 2 % of the bin's middle `2 γ^k / (γ + 1)`, so a percentile read from the
-- bins is within 2 % of the true one, over any union of sketches (merging adds counts bin
-- by bin). Times under 1 µs count as 1 µs. A sketch is a `bigint[]` sorted by bin, one
-- element per bin that has values: the bin in the high 32 bits, its count in the low 32.

-- (Plain SQL bodies, so that PostgreSQL inlines them into the queries that call them.)
CREATE FUNCTION sitemon_sketch_bin(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ceil(ln(CASE WHEN ms < 0.001 THEN 0.001 ELSE ms END)
                / ln(1.02::float8 / 0.98::float8))::integer
$$;

CREATE FUNCTION sitemon_sketch_value(bin integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 2 * power(1.02::float8 / 0.98::float8, bin) / (1.02::float8 / 0.98::float8 + 1) $$;

-- Two sketches as one.
CREATE FUNCTION sitemon_sketch_merge(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(array_agg((bin << 32) | n ORDER BY bin), '{}')
    FROM (SELECT e >> 32 AS bin, sum(e & 4294967295)::bigint AS n
          FROM unnest(a || b) AS e GROUP BY 1) AS bins;
END;

-- The value at quantile q (0..1) of a sketch: the middle of the bin holding the element of
-- rank floor(q * (n - 1)), counting from 0; NULL for an empty sketch. For queries by hand:
-- the reports compute the same over many sketches at once (`sitemon_core::report`).
CREATE FUNCTION sitemon_sketch_quantile(sketch bigint[], q double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT sitemon_sketch_value(bin::integer)
    FROM (SELECT e >> 32 AS bin,
                 sum(e & 4294967295) OVER (ORDER BY e >> 32) AS below,
                 sum(e & 4294967295) OVER () AS total
          FROM unnest(sketch) AS e) AS c
    WHERE below > floor(q * (total - 1))
    ORDER BY bin
    LIMIT 1;
END;

-- Two counts of error kinds as one: {"timeout": 3} and {"timeout": 1, "dns": 1}.
CREATE FUNCTION sitemon_counts_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(jsonb_object_agg(k, n), '{}')
    FROM (SELECT k, sum(v::bigint) AS n
          FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b))
               AS x(k, v)
          GROUP BY k) AS c;
END;

-- # Rollups
-- One row per site, location and UTC hour (day). Counted from the rows the sync stored, in
-- the same transaction, so they always equal a GROUP BY over the stored rows; duplicates
-- and rejects are not rows and never count. `location` is '' for events without one.
CREATE TABLE website_status_hourly (
    website_id       integer          NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    bucket_start     timestamptz      NOT NULL,
    location         text             NOT NULL,
    checks           bigint           NOT NULL,
    up               bigint           NOT NULL,
    -- Checks that were up but slower than the site's `degraded_after_ms` (counted in `up`).
    degraded         bigint           NOT NULL DEFAULT 0,
    -- Checks that failed, by error kind.
    errors           jsonb            NOT NULL,
    -- Over the checks that have a response time.
    rt_count         bigint           NOT NULL,
    rt_sum           double precision NOT NULL,
    rt_min           double precision,
    rt_max           double precision,
    rt_sketch        bigint[]         NOT NULL,
    PRIMARY KEY (website_id, bucket_start, location)
);

CREATE TABLE website_status_daily (LIKE website_status_hourly INCLUDING ALL);
ALTER TABLE website_status_daily
    ADD FOREIGN KEY (website_id) REFERENCES websites (id) ON DELETE CASCADE;

-- "Whole hours (days) of every site in a window": the reports' range scans.
CREATE INDEX website_status_hourly_time ON website_status_hourly (bucket_start);
CREATE INDEX website_status_daily_time ON website_status_daily (bucket_start);
