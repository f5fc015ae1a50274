-- Kept in step with PostgreSQL, where several nodes share transport rate limits through this
-- table. A SQLite store has one node, which paces its sends in memory.
CREATE TABLE transport_pace (
    transport  TEXT PRIMARY KEY,
    next_slot  TEXT NOT NULL
);
