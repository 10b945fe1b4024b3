-- Messages to residents in a request's history: the status flow records every message it
-- queues as a `message` event (notes = the text, at = when it was queued, event_id = the
-- message id, so a replay records it once). The operator console also reads the newest
-- requests first (its live stream), and shows who decided a request's service or department
-- when an operator re-classified or re-routed it (NULL: the classifier and the routing table).
-- Applied once by migrate().

ALTER TABLE request_events DROP CONSTRAINT request_events_kind_check;
ALTER TABLE request_events
    ADD CONSTRAINT request_events_kind_check CHECK (kind IN ('received', 'updated', 'status', 'message'));

CREATE INDEX requests_updated ON requests (updated_datetime DESC, request_id DESC);

ALTER TABLE requests
    ADD COLUMN assigned_department  text,
    ADD COLUMN decided_by           text;
