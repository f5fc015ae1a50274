-- Herald core schema (PostgreSQL). Timestamps are written by the application clock.
CREATE TABLE contacts (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    attributes  JSONB NOT NULL DEFAULT '{}',
    subscribed  BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX contacts_email ON contacts (email);

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    contact_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    properties  JSONB NOT NULL DEFAULT '{}',
    occurred_at TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_contact_name ON events (contact_id, name, occurred_at);

CREATE TABLE journeys (
    id            TEXT PRIMARY KEY,
    workflow      TEXT NOT NULL,
    contact_id    TEXT NOT NULL,
    journey_key   TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL,            -- active | completed | exited | failed
    step          TEXT,                     -- key of the next step to run; NULL when ended
    context       JSONB NOT NULL DEFAULT '{}', -- the triggering event and journey-scoped data
    entered_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    ended_at      TIMESTAMPTZ,
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
    payload       JSONB NOT NULL DEFAULT '{}',
    status        TEXT NOT NULL,            -- queued | running | done | dead
    run_at        TIMESTAMPTZ NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    max_attempts  BIGINT NOT NULL,
    locked_by     TEXT,
    locked_until  TIMESTAMPTZ,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_due ON jobs (run_at) WHERE status = 'queued';
CREATE INDEX jobs_lease ON jobs (locked_until) WHERE status = 'running';
CREATE UNIQUE INDEX jobs_journey ON jobs (journey_id) WHERE journey_id IS NOT NULL AND status IN ('queued', 'running');

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    journey_id          TEXT NOT NULL,
    step                TEXT NOT NULL,
    iteration           BIGINT NOT NULL DEFAULT 0,
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
    attempts            BIGINT NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    sent_at             TIMESTAMPTZ,
    UNIQUE (journey_id, step, iteration)
);
CREATE INDEX messages_contact ON messages (contact_id, created_at);
CREATE INDEX messages_status ON messages (status);

CREATE TABLE message_events (
    id          TEXT PRIMARY KEY,
    message_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- delivered | opened | clicked | bounced | complained | ...
    detail      JSONB NOT NULL DEFAULT '{}',
    machine     BOOLEAN NOT NULL DEFAULT FALSE,
    occurred_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX message_events_message ON message_events (message_id, kind);

CREATE TABLE suppressions (
    email       TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    detail      TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Installation-wide values such as the generated token secret.
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
