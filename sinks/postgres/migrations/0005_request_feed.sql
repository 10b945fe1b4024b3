-- A change feed for department systems that pull (GET /api/requests): when the city's record of
-- a request last changed, by this server's clock. `updated_datetime` is not that: it is the
-- newest event's own time, which a late-arriving event (a text queued on a phone, a replay) can
-- put in the past, behind a puller's cursor. `changed_at` is set by the database itself on every
-- write that changes a request (content, status, departments, incident) and on every message
-- to the resident, so no code path can forget it. Applied once by migrate().

ALTER TABLE requests ADD COLUMN changed_at timestamptz;
UPDATE requests SET changed_at = updated_datetime;
ALTER TABLE requests ALTER COLUMN changed_at SET NOT NULL;
ALTER TABLE requests ALTER COLUMN changed_at SET DEFAULT clock_timestamp();

CREATE INDEX requests_changed ON requests (changed_at, request_id);

CREATE FUNCTION requests_set_changed_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A replayed event rewrites a row with the values it has: that is no change.
    IF TG_OP = 'INSERT' OR NEW IS DISTINCT FROM OLD THEN
        NEW.changed_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER requests_changed_at BEFORE INSERT OR UPDATE ON requests
    FOR EACH ROW EXECUTE FUNCTION requests_set_changed_at();

-- A message to the resident is part of the request's history without changing its row.
CREATE FUNCTION request_events_touch_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE requests SET changed_at = clock_timestamp() WHERE request_id = NEW.request_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER request_events_message_changes_request AFTER INSERT ON request_events
    FOR EACH ROW WHEN (NEW.kind = 'message') EXECUTE FUNCTION request_events_touch_request();
