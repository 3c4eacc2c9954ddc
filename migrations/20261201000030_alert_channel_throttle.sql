-- A receiver that throttles (HTTP 429, or any answer with a `Retry-After`) throttles its
-- channel, not one notification: the delivery loop claims none of the channel's
-- notifications before `throttled_until`, while the other channels go on. The wait is the
-- receiver's `Retry-After` (or the back-off, if longer), capped at the notification's
-- give-up time. NULL: not throttled.
ALTER TABLE alert_channels
    ADD COLUMN throttled_until timestamptz;
