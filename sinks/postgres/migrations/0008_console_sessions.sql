-- Console sessions ended before their time: a console session is a signed cookie (every web
-- replica reads it with no shared state), so logging out only deleted the browser's copy, and
-- a copied cookie stayed good until it expired (console.session_hours). Logging out now records
-- the session here, by a hash of its id, until the time it would have expired; every replica
-- refuses a recorded one. Rows past their expiry are deleted as new ones are added.
-- Applied once by migrate().

CREATE TABLE console_ended_sessions (
    session_hash  text PRIMARY KEY,
    expires_at    timestamptz NOT NULL
);

CREATE INDEX console_ended_sessions_expiry ON console_ended_sessions (expires_at);
