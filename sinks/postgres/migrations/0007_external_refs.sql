-- Where a request is known in the city's own systems: the open311 sink creates it in the city's
-- work-order system and announces the id it got (schemas/external.py, ExternalRef), which the
-- case store keeps as `external_ids` (system -> id, e.g. {"open311:public-works/city": "1001"})
-- plus an `external` event in the request's history. Operators see it in the console, department
-- systems in GET /api/requests. Applied once by migrate().
--
-- An id can arrive before its request: the open311 sink and the postgres sink read the
-- department topic in separate consumer groups, and a POST to the city can beat an upsert. Such
-- an id waits in `external_refs_waiting` (no foreign key) and the request's first insert takes it
-- (the trigger below). Every transaction that inserts requests takes one shared advisory lock
-- (one lock-table slot however many requests it inserts), and an id that finds no request takes
-- the same lock exclusively and looks again before it waits: so an id recorded while its
-- request is being inserted is never left waiting, and the usual case (the request is there)
-- takes no lock at all.
-- Waiting rows of requests the case store never gets (a department without a postgres sink)
-- stay: one small row each.

ALTER TABLE requests ADD COLUMN external_ids jsonb NOT NULL DEFAULT '{}';

ALTER TABLE request_events DROP CONSTRAINT request_events_kind_check;
ALTER TABLE request_events
    ADD CONSTRAINT request_events_kind_check
    CHECK (kind IN ('received', 'updated', 'status', 'message', 'external'));

CREATE TABLE external_refs_waiting (
    event_id     text PRIMARY KEY,
    request_id   text NOT NULL,
    system       text NOT NULL,
    external_id  text NOT NULL,
    at           timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX external_refs_waiting_request ON external_refs_waiting (request_id);

-- (3110007, 0): this migration's advisory lock (two-key form), shared by request inserts.
CREATE FUNCTION requests_take_waiting_external_refs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(3110007, 0);
    IF NOT EXISTS (SELECT 1 FROM external_refs_waiting WHERE request_id = NEW.request_id) THEN
        RETURN NULL;
    END IF;
    INSERT INTO request_events (event_id, request_id, kind, status, state, notes, at, source)
        SELECT w.event_id, NEW.request_id, 'external', NEW.status, NEW.state,
               w.system || ' #' || w.external_id, w.at, w.system
        FROM external_refs_waiting w WHERE w.request_id = NEW.request_id
        ON CONFLICT (event_id) DO NOTHING;
    UPDATE requests SET external_ids = external_ids || (
        SELECT jsonb_object_agg(w.system, w.external_id ORDER BY w.at)
        FROM external_refs_waiting w WHERE w.request_id = NEW.request_id
    ) WHERE request_id = NEW.request_id;
    DELETE FROM external_refs_waiting WHERE request_id = NEW.request_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER requests_external_refs_waiting AFTER INSERT ON requests
    FOR EACH ROW EXECUTE FUNCTION requests_take_waiting_external_refs();
