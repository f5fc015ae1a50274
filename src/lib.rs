//! Herald: self-hosted behavioral email automation. Contacts and events come in over HTTP,
//! workflows defined in YAML turn them into per-contact journeys, and messages go out through
//! SMTP or a provider API from a durable, lease-based scheduler.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod diagnostic;
pub mod feedback;
pub mod ingest;
pub mod message;
pub mod policy;
pub mod project;
pub mod scheduler;
pub mod segment;
pub mod send;
pub mod store;
pub mod template;
pub mod tracking;
pub mod transport;
pub mod webhook;
pub mod workflow;
