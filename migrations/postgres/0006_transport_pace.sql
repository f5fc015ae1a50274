-- Per-transport rate limits across nodes: each transport's next free send slot, reserved by
-- every node with one atomic UPDATE, so N nodes together start at most `rate` sends a second.
CREATE TABLE transport_pace (
    transport  TEXT PRIMARY KEY,
    next_slot  TIMESTAMPTZ NOT NULL
);
