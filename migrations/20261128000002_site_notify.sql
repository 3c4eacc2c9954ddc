-- The checker follows the site list without a restart: every statement that changes
-- `websites` sends one notification on the channel `sitemon_sites` (statement-level, so a
-- bulk insert of many sites is one notification, not thousands). The checker reloads the
-- list when notified, and also periodically in case a notification was missed.

CREATE FUNCTION sitemon_notify_sites() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sitemon_sites', TG_OP);
    RETURN NULL;
END
$$;

CREATE TRIGGER websites_notify_checkers
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON websites
    FOR EACH STATEMENT EXECUTE FUNCTION sitemon_notify_sites();
