-- A channel that wants site URLs whole in its notifications says so (`channel add
-- --full-urls`); every other channel gets them masked (credentials and query values, as
-- `sitemon_core::mask::mask_url` does). The processor reads this when it writes a
-- notification into the outbox, so the outbox row of such a channel holds the URL whole, as
-- `websites.url` does; every other row holds it masked.
ALTER TABLE alert_channels ADD COLUMN full_urls boolean NOT NULL DEFAULT false;
