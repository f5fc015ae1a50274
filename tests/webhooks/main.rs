//! `herald::webhook` against the providers' official signature vectors and sample payloads
//! (`tests/fixtures/webhooks`, origins in its `SOURCES.md`): every sample normalizes to the
//! expected events; forged, expired, replayed and unsigned requests are refused before anything
//! is parsed; no input makes the verifier panic.

mod config;
mod mailgun;
mod postmark;
mod resend;
mod robustness;
mod sendgrid;
mod ses;
mod support;
