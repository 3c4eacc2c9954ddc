-- The latest check of every site and location, kept by the statement that stores checks, so
-- that `sitemon status` reads one small row per site and location instead of probing the
-- raw history's index once per site (10,000 probes across the day partitions: ~210 ms of a
-- 24-hour status over 10,000 sites).
--
-- # How it is kept
-- `sitemon_core::history::rollup_ctes`, the SQL every writer of raw rows appends to the
-- statement that stores them (the sync's batches, the move of an unpartitioned table, the
-- rebuild), upserts the newest stored row of each site and location of the statement. A row
-- replaces the stored one only when its `timestamp_utc` is not older, so redelivery (a
-- duplicate is never stored, so never reaches it) and events that arrive out of order
-- cannot move it back. `sitemon rollup rebuild` recomputes it from the raw rows of the days
-- it rebuilds. Retention does not touch it: a site whose raw history expired still shows its
-- last check.
--
-- `location` is '' for events without one, as in the rollups. `tls_cert_not_after` is the
-- check's `request_info ->> 'tls_cert_not_after'` as text, cast where it is read (as the
-- status query did before), so that no value in an event can fail the sync's statement.
CREATE TABLE website_latest (
    website_id         integer     NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    location           text        NOT NULL,
    timestamp_utc      timestamptz NOT NULL,
    is_up              boolean,
    degraded           boolean     NOT NULL,
    status_code        smallint,
    error_kind         text,
    tls_cert_not_after text,
    PRIMARY KEY (website_id, location)
);

-- The history stored so far: for each site and location, the last day its daily rollup
-- has, then the newest raw row of that day (the index on `(website_id, timestamp_utc
-- DESC)`, within one day), instead of a scan of the whole raw history. Raw rows without
-- rollups (written by hand) are found by `sitemon rollup rebuild`.
INSERT INTO website_latest (website_id, location, timestamp_utc, is_up, degraded, status_code,
                            error_kind, tls_cert_not_after)
SELECT last_day.website_id, last_day.location, s.timestamp_utc, s.is_up, s.degraded,
       s.status_code, s.error_kind, s.request_info ->> 'tls_cert_not_after'
FROM (SELECT website_id, location, max(bucket_start) AS day
      FROM website_status_daily GROUP BY 1, 2) AS last_day
CROSS JOIN LATERAL (
    SELECT timestamp_utc, is_up, degraded, status_code, error_kind, request_info
    FROM website_status
    WHERE website_id = last_day.website_id
      AND timestamp_utc >= last_day.day AND timestamp_utc < last_day.day + interval '24 hours'
      AND coalesce(location, '') = last_day.location
    ORDER BY timestamp_utc DESC
    LIMIT 1
) AS s;
