-- `sitemon status` reads each site's window from this index alone (an index-only scan): the
-- key gives the site order and the time range, the included columns the numbers. Without
-- them every row of the window is a random heap visit.
DROP INDEX website_status_site_time;
CREATE INDEX website_status_site_time ON website_status (website_id, timestamp_utc DESC)
    INCLUDE (is_up, response_time_ms);
