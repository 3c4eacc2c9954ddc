-- Sites as code and richer checks (issue 13): every setting of a sites file is a column of
-- `websites`, NULL or its default keeping today's behaviour; a check's degraded state is a
-- column of `website_status`. Only columns are added (instant: constant defaults), so this
-- also works on a partitioned `website_status`.

ALTER TABLE websites
    -- Identifies the site in a sites file instead of its URL; NULL = none.
    ADD COLUMN name text CONSTRAINT websites_name_key UNIQUE,
    ADD COLUMN method text NOT NULL DEFAULT 'GET'
        CONSTRAINT websites_method_known CHECK (method IN ('GET', 'HEAD', 'POST')),
    -- Request headers, {"Name": "value"}.
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT websites_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    -- The request body (POST only).
    ADD COLUMN body text,
    -- Statuses that count as up, e.g. '200-299,301'; NULL = any 2xx.
    ADD COLUMN expect_status text,
    -- A regex the body must not match for the site to be up.
    ADD COLUMN regex_must_not_match text,
    -- A successful check slower than this is degraded; NULL = never.
    ADD COLUMN degraded_after_ms integer CONSTRAINT websites_degraded_positive CHECK (degraded_after_ms > 0),
    -- This site's check timeout; NULL = the checker's --timeout.
    ADD COLUMN timeout_ms integer CONSTRAINT websites_timeout_positive CHECK (timeout_ms > 0),
    ADD COLUMN follow_redirects boolean NOT NULL DEFAULT true,
    ADD COLUMN tls_verify boolean NOT NULL DEFAULT true;

ALTER TABLE website_status
    -- The check was up but slower than the site's degraded_after_ms.
    ADD COLUMN degraded boolean NOT NULL DEFAULT false;
