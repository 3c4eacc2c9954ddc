-- Alerting (`sitemon-alert`): per-site overrides, the state machine's state, incidents, the
-- transactional outbox of notifications, the channels they go to, maintenance windows and
-- the certificate-expiry notices already sent.
--
-- Everything the alert processor decides is written in the transaction of the events that
-- caused it (with the consumer's stored offsets), so a crash neither loses nor repeats a
-- decision. The delivery loop reads `alert_outbox` alone, independent of Kafka.
--
-- Cost: adding nullable columns to `websites` is instant (no rewrite); the new tables are
-- empty. `website_status` is not touched.

-- Per-site overrides of the alert service's defaults; NULL = the service's default.
ALTER TABLE websites
    -- Consecutive failed checks that take a location from up to down.
    ADD COLUMN failure_threshold integer
        CONSTRAINT websites_failure_threshold_range CHECK (failure_threshold BETWEEN 1 AND 1000),
    -- Consecutive successful checks that take a location from down to up.
    ADD COLUMN success_threshold integer
        CONSTRAINT websites_success_threshold_range CHECK (success_threshold BETWEEN 1 AND 1000),
    -- How many locations must be down for an incident to open.
    ADD COLUMN min_locations integer
        CONSTRAINT websites_min_locations_range CHECK (min_locations BETWEEN 1 AND 100),
    -- How often an open incident is notified again; '0' = never.
    ADD COLUMN reminder_every interval
        CONSTRAINT websites_reminder_every_range
        CHECK (reminder_every BETWEEN interval '0' AND interval '366 days'),
    -- Notify when the TLS certificate expires within this many days; 0 = never.
    ADD COLUMN cert_expiry_days integer
        CONSTRAINT websites_cert_expiry_days_range CHECK (cert_expiry_days BETWEEN 0 AND 3650),
    -- The channels (alert_channels.name) this site notifies; NULL = every channel.
    ADD COLUMN channels text[];

-- Where notifications go. `settings` holds the kind's settings as JSON, secrets included
-- (webhook and Slack URLs, the PagerDuty routing key, the SMTP URL with its password): the
-- code never prints them (`sitemon channel list` masks them).
CREATE TABLE alert_channels (
    name       text PRIMARY KEY
               CONSTRAINT alert_channels_name_shape CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    kind       text NOT NULL
               CONSTRAINT alert_channels_kind CHECK (kind IN ('webhook', 'slack', 'pagerduty', 'email')),
    settings   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One state machine per site and location: up or down, and the run of checks that
-- contradicts that state (failures while up, successes while down).
CREATE TABLE alert_location_state (
    website_id      integer NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    location        text    NOT NULL,
    down            boolean NOT NULL,
    -- The length of the current run of checks that contradict `down`.
    streak          integer NOT NULL CHECK (streak >= 0),
    -- The error of the first failed check of the current run of failures (while up), or of
    -- the run that took the location down (while down).
    streak_error    text,
    -- When the location went down (NULL while up).
    down_since      timestamptz,
    -- The last check applied: events at or before it are replays and change nothing.
    last_checked_at timestamptz NOT NULL,
    last_check_id   uuid        NOT NULL,
    PRIMARY KEY (website_id, location)
);

-- An incident: a site down in at least min_locations locations. Its id is the check_id of
-- the check that opened it, so that a replay of the same events makes the same id.
CREATE TABLE alert_incidents (
    id               uuid PRIMARY KEY,
    website_id       integer     NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    opened_at        timestamptz NOT NULL,
    resolved_at      timestamptz CHECK (resolved_at IS NULL OR resolved_at >= opened_at),
    -- The first failing check's error.
    first_error      text,
    -- Every location that was down during the incident.
    locations        text[]      NOT NULL,
    -- The channels notified when it opened; its reminders and resolution go to the same.
    channels         text[]      NOT NULL,
    -- Reminders sent so far, and when the last one was due.
    reminders        integer     NOT NULL DEFAULT 0 CHECK (reminders >= 0),
    last_reminder_at timestamptz
);
-- At most one open incident per site.
CREATE UNIQUE INDEX alert_incidents_one_open ON alert_incidents (website_id) WHERE resolved_at IS NULL;
CREATE INDEX alert_incidents_opened ON alert_incidents (opened_at DESC);

-- The transactional outbox: one row per notification to one channel. Its id is stable
-- (derived from the incident, the kind and the channel) and is what receivers de-duplicate
-- by (webhook Idempotency-Key, email Message-ID; PagerDuty gets the incident id).
CREATE TABLE alert_outbox (
    id              uuid PRIMARY KEY,
    incident_id     uuid REFERENCES alert_incidents (id) ON DELETE CASCADE,
    website_id      integer REFERENCES websites (id) ON DELETE CASCADE,
    -- Deleting a channel drops the notifications it had not yet delivered.
    channel         text NOT NULL REFERENCES alert_channels (name) ON DELETE CASCADE,
    kind            text NOT NULL
                    CONSTRAINT alert_outbox_kind
                    CHECK (kind IN ('down', 'resolved', 'reminder', 'cert_expiry', 'test')),
    -- The notification as JSON (never a secret: the channel's settings are read at delivery).
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    state           text        NOT NULL DEFAULT 'pending'
                    CONSTRAINT alert_outbox_state CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the delivery loop may try it next (also the claim of an attempt in flight).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- What the receiver answered last (status and the start of the body, or the error).
    last_answer     text,
    finished_at     timestamptz
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX alert_outbox_incident ON alert_outbox (incident_id);

-- Windows during which checks go on and are stored but no incident opens.
CREATE TABLE alert_maintenance (
    id         serial PRIMARY KEY,
    -- NULL = every site.
    website_id integer REFERENCES websites (id) ON DELETE CASCADE,
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_maintenance_order CHECK (ends_at > starts_at)
);
CREATE INDEX alert_maintenance_site ON alert_maintenance (website_id, ends_at);

-- Certificate-expiry notices sent: once per certificate, which the check events name by
-- its expiry (`tls_cert_not_after`).
CREATE TABLE alert_cert_notices (
    website_id  integer     NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    not_after   timestamptz NOT NULL,
    noticed_at  timestamptz NOT NULL,
    PRIMARY KEY (website_id, not_after)
);

-- The delivery loop is woken by this channel when a transaction adds to the outbox.
COMMENT ON TABLE alert_outbox IS 'writers NOTIFY sitemon_alert_outbox in the same transaction';
