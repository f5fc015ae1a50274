-- Soft-bounce counting (suppression after N soft bounces within a window) is the only reader of
-- the ledger by recipient: index just those rows, so the other events cost one index less to
-- store.
DROP INDEX delivery_events_recipient;
CREATE INDEX delivery_events_soft_bounces ON delivery_events (recipient, occurred_at)
    WHERE kind = 'bounced' AND severity = 'soft';
