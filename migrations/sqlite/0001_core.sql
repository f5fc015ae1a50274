-- Herald core schema (SQLite). Timestamps are RFC 3339 UTC text written by the application clock.
CREATE TABLE contacts (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    attributes  TEXT NOT NULL DEFAULT '{}',
    subscribed  INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX contacts_email ON contacts (email);

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    contact_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    properties  TEXT NOT NULL DEFAULT '{}',
    occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX events_contact_name ON events (contact_id, name, occurred_at);

CREATE TABLE journeys (
    id            TEXT PRIMARY KEY,
    workflow      TEXT NOT NULL,
    contact_id    TEXT NOT NULL,
    journey_key   TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL,            -- active | completed | exited | failed
    step          TEXT,                     -- key of the next step to run; NULL when ended
    context       TEXT NOT NULL DEFAULT '{}', -- the triggering event and journey-scoped data
    entered_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    ended_at      TEXT,
    end_reason    TEXT
);
CREATE INDEX journeys_contact ON journeys (contact_id, status);
CREATE INDEX journeys_entry ON journeys (workflow, contact_id, journey_key, entered_at);
-- One active journey per (workflow, contact, key).
CREATE UNIQUE INDEX journeys_one_active ON journeys (workflow, contact_id, journey_key) WHERE status = 'active';

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,            -- journey
    journey_id    TEXT,
    payload       TEXT NOT NULL DEFAULT '{}',
    status        TEXT NOT NULL,            -- queued | running | done | dead
    run_at        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    locked_by     TEXT,
    locked_until  TEXT,
    last_error    TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX jobs_due ON jobs (run_at) WHERE status = 'queued';
CREATE INDEX jobs_lease ON jobs (locked_until) WHERE status = 'running';
CREATE UNIQUE INDEX jobs_journey ON jobs (journey_id) WHERE journey_id IS NOT NULL AND status IN ('queued', 'running');

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    journey_id          TEXT NOT NULL,
    step                TEXT NOT NULL,
    iteration           INTEGER NOT NULL DEFAULT 0,
    contact_id          TEXT NOT NULL,
    workflow            TEXT NOT NULL,
    template            TEXT NOT NULL,
    category            TEXT NOT NULL,
    to_email            TEXT NOT NULL,
    subject             TEXT,
    status              TEXT NOT NULL,      -- pending | sending | sent | failed | unknown | suppressed
    transport           TEXT,
    provider_message_id TEXT,
    detail              TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    sent_at             TEXT,
    UNIQUE (journey_id, step, iteration)
);
CREATE INDEX messages_contact ON messages (contact_id, created_at);
CREATE INDEX messages_status ON messages (status);

CREATE TABLE message_events (
    id          TEXT PRIMARY KEY,
    message_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- delivered | opened | clicked | bounced | complained | ...
    detail      TEXT NOT NULL DEFAULT '{}',
    machine     INTEGER NOT NULL DEFAULT 0,
    occurred_at TEXT NOT NULL
);
CREATE INDEX message_events_message ON message_events (message_id, kind);

CREATE TABLE suppressions (
    email       TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    detail      TEXT,
    created_at  TEXT NOT NULL
);

-- Installation-wide values such as the generated token secret.
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
