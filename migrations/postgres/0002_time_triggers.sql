-- Date triggers and contact-local schedules: each contact's next fire instant per workflow,
-- indexed so a sweep reads only what is due.
CREATE TABLE trigger_times (
    workflow    TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    fire_at     TIMESTAMPTZ NOT NULL,
    occurrence  TEXT NOT NULL,   -- which occurrence: the year of a date, the local time of a cron tick
    PRIMARY KEY (workflow, contact_id)
);
CREATE INDEX trigger_times_due ON trigger_times (fire_at);

-- Occurrences that fired: at most one per (workflow, contact, occurrence), across restarts and nodes.
CREATE TABLE trigger_fires (
    workflow    TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    occurrence  TEXT NOT NULL,
    fired_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow, contact_id, occurrence)
);

-- Time-trigger definitions as last seen, so a new or changed one is (re)computed once.
CREATE TABLE trigger_specs (
    workflow     TEXT PRIMARY KEY,
    spec         TEXT NOT NULL,
    next_run_at  TIMESTAMPTZ,          -- fixed-zone schedules: the next tick, advanced by compare-and-set
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX trigger_specs_due ON trigger_specs (next_run_at);

-- The last etiquette decision about a journey (deferred_until …, skipped: frequency_cap).
ALTER TABLE journeys ADD COLUMN note TEXT;
