//! Integration tests: the real application over HTTP, a real SMTP server, SQLite always and
//! PostgreSQL when `HERALD_TEST_POSTGRES_URL` is set. One binary, one link step.

mod helpers;

mod api;
mod cluster;
mod durability;
mod feedback;
mod journeys;
mod providers;
mod record_batch;
mod segments;
mod timing;
mod validation;
