-- How soon a request needs a person (emergency / high / normal / low), why (for an operator:
-- "cue: blocking the road", "3 reports of this incident"), and the emergency its text describes
-- ("gas"). Rows stored before priorities existed are normal, with no reason and no emergency.
-- `intake311 report --by priority` and the SLA share per (service, priority) read them.
-- Applied once by migrate().

ALTER TABLE requests
    ADD COLUMN priority         text NOT NULL DEFAULT 'normal'
                                CHECK (priority IN ('emergency', 'high', 'normal', 'low')),
    ADD COLUMN priority_reason  text,
    ADD COLUMN emergency        text;

CREATE INDEX requests_open_priority ON requests (priority, requested_datetime DESC) WHERE status = 'open';
