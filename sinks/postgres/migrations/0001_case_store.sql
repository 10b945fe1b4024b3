-- The case store: one row per service request (its current state) and an append-only log of
-- every event that touched it. Applied once by sinks.postgres.migrations.migrate().

CREATE TABLE requests (
    request_id              text PRIMARY KEY,              -- the resident's ticket (Open311 service_request_id)
    event_id                text NOT NULL,                 -- the request event the content columns come from
    event_updated_datetime  timestamptz NOT NULL,          -- that event's updated_datetime: newer events win
    service_code            text NOT NULL,
    service_name            text NOT NULL,
    description             text NOT NULL DEFAULT '',
    lat                     double precision,
    long                    double precision,
    address                 text,
    media_url               text,
    media                   jsonb NOT NULL DEFAULT '[]',
    status                  text NOT NULL CHECK (status IN ('open', 'closed')),
    state                   text NOT NULL CHECK (state IN ('new', 'acknowledged', 'in_progress', 'closed')),
    status_notes            text,
    status_changed_at       timestamptz NOT NULL,          -- when status/state last changed
    closed_datetime         timestamptz,                   -- set while closed: time to close, SLA
    agency_responsible      text,
    service_notice          text,
    channel                 text NOT NULL,
    requested_datetime      timestamptz NOT NULL,
    updated_datetime        timestamptz NOT NULL,
    expected_datetime       timestamptz,
    confidence              double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    triage                  boolean NOT NULL DEFAULT false,
    reporter                jsonb NOT NULL DEFAULT '{}',   -- PERSONAL DATA: never in Open311 output
    reply                   jsonb,                         -- PERSONAL DATA: how to answer the resident
    language                text NOT NULL DEFAULT 'en',
    source_contact_ids      text[] NOT NULL DEFAULT '{}',
    departments             text[] NOT NULL DEFAULT '{}',  -- every department it was delivered to
    created_at              timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'closed') = (state = 'closed')),
    CHECK ((status = 'closed') = (closed_datetime IS NOT NULL))
);

CREATE INDEX requests_requested ON requests (requested_datetime DESC, request_id DESC);
CREATE INDEX requests_service_requested ON requests (service_code, requested_datetime DESC);
CREATE INDEX requests_closed ON requests (closed_datetime) WHERE closed_datetime IS NOT NULL;
CREATE INDEX requests_open_expected ON requests (expected_datetime) WHERE status = 'open';

CREATE TABLE request_events (
    id           bigserial PRIMARY KEY,                    -- arrival order
    event_id     text NOT NULL UNIQUE,                     -- dedupe: a replayed event is stored once
    request_id   text NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('received', 'updated', 'status')),
    status       text NOT NULL CHECK (status IN ('open', 'closed')),
    state        text CHECK (state IN ('new', 'acknowledged', 'in_progress', 'closed')),
    notes        text,
    at           timestamptz NOT NULL,                     -- when it happened (not when stored)
    source       text NOT NULL,                            -- "pipeline:<department>", "slack:U123", ...
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX request_events_request ON request_events (request_id, at, id);

-- Status history as people read it: the opening event and every status change, oldest first.
CREATE VIEW status_history AS
    SELECT request_id, event_id, status, state, notes, at, source, recorded_at
    FROM request_events
    WHERE kind IN ('received', 'status');
