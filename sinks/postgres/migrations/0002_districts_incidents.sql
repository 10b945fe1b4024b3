-- Where a request is (its districts, how exactly it was located), why it needs a person, and
-- the incident it belongs to: what Open311 extended attributes, `report --by`, and a crew
-- working one pothole reported three times need. Applied once by migrate().

ALTER TABLE requests
    ADD COLUMN districts            jsonb NOT NULL DEFAULT '{}',   -- boundary layer -> district name
    ADD COLUMN location_precision   text,                          -- given/address/interpolated/intersection/street
    ADD COLUMN triage_reason        text,
    ADD COLUMN incident_id          text,                          -- ticket of the incident's first request
    ADD COLUMN incident_reports     integer NOT NULL DEFAULT 1 CHECK (incident_reports >= 1),
    ADD COLUMN related_incident_id  text;                          -- a closed incident this one follows

-- Every request belongs to an incident, its own when it opened it: rows stored before incidents
-- existed are each their own, so "every request of incident X" is one indexed lookup.
UPDATE requests SET incident_id = request_id WHERE incident_id IS NULL;
ALTER TABLE requests ALTER COLUMN incident_id SET NOT NULL;

CREATE INDEX requests_incident ON requests (incident_id);
