-- What happened to each message, from provider webhooks, Herald's own tracking, and engagement
-- posted as events. One ledger; orphans (no matching message) keep message_id NULL.
CREATE TABLE delivery_events (
    id                  TEXT PRIMARY KEY,
    provider            TEXT NOT NULL,     -- sendgrid | postmark | mailgun | ses | resend | herald | api
    provider_event_id   TEXT NOT NULL,
    message_id          TEXT,
    provider_message_id TEXT,
    recipient           TEXT,
    kind                TEXT NOT NULL,     -- delivered | deferred | bounced | opened | clicked | complained | unsubscribed | dropped
    severity            TEXT,              -- bounces: hard | soft
    detail              TEXT NOT NULL DEFAULT '{}',
    machine             INTEGER NOT NULL DEFAULT 0,
    occurred_at         TEXT NOT NULL,
    received_at         TEXT NOT NULL,
    UNIQUE (provider, provider_event_id)
);
CREATE INDEX delivery_events_message ON delivery_events (message_id, kind);
CREATE INDEX delivery_events_recipient ON delivery_events (recipient, kind, occurred_at);
CREATE INDEX messages_provider_message ON messages (provider_message_id);

INSERT INTO delivery_events (id, provider, provider_event_id, message_id, kind, detail, machine, occurred_at, received_at)
    SELECT id, 'api', id, message_id, kind, detail, machine, occurred_at, occurred_at FROM message_events;
DROP TABLE message_events;

-- One-time webhook tokens (Mailgun) seen recently, to reject replays.
CREATE TABLE webhook_replays (
    key         TEXT PRIMARY KEY,
    expires_at  TEXT NOT NULL
);
