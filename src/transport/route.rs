//! Routing a message to a transport, with failover and circuit breakers.
//!
//! Every configured transport is a route: itself first, then its `fallback` list in order, each
//! fallback followed by its own fallbacks (depth first, each transport once; configuration
//! loading rejects cycles). A send walks the route until a transport takes the message:
//! - success, or a permanent rejection (the provider works; the message is the problem), or an
//!   unknown outcome (the message may be out) end the walk — a fallback is never tried after a
//!   permanent rejection or a possible delivery;
//! - a transient failure or a used-up quota moves on to the next transport.
//!
//! Each transport has a circuit breaker: after [`FAILURES_TO_OPEN`] consecutive transient
//! failures it opens and the transport is skipped for [`COOLDOWN`]; then one send probes it
//! (half-open) while the others keep skipping it; the probe's success closes the circuit, its
//! failure opens it again. A used-up quota opens the circuit until the quota resets. All times
//! come from the injected [`Clock`], so tests drive the breaker with a manual clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};

use super::limit::Limiter;
use super::{Receipt, SendError, Transport};
use crate::clock::Clock;
use crate::message::BuiltMessage;

/// Consecutive transient failures that open a transport's circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open circuit stays open before a probe is let through.
pub const COOLDOWN: TimeDelta = TimeDelta::seconds(30);

/// One transport with its limits, for [`Router::new`].
#[derive(Debug)]
pub struct RouteEntry {
    /// The transport (its name is the route name).
    pub transport: Transport,
    /// Its rate and concurrency limits.
    pub limiter: Limiter,
    /// Names of the transports to try, in order, when this one is unavailable.
    pub fallback: Vec<String>,
}

/// A route configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A fallback names no configured transport.
    #[error("transports.{transport}.fallback: no transport named `{fallback}`")]
    UnknownFallback {
        /// The transport whose list is wrong.
        transport: String,
        /// The missing name.
        fallback: String,
    },
    /// Two transports share a name.
    #[error("transport `{0}` is configured twice")]
    Duplicate(String),
}

/// A message that a transport took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The transport's receipt.
    pub receipt: Receipt,
    /// The transport that took it (the route's first one, or a fallback).
    pub transport: String,
}

/// The configured transports and the routes through them. Shared by every worker.
pub struct Router {
    clock: Clock,
    endpoints: HashMap<String, Arc<Endpoint>>,
    routes: HashMap<String, Vec<Arc<Endpoint>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut routes: Vec<(&String, Vec<&str>)> = self
            .routes
            .iter()
            .map(|(name, chain)| (name, chain.iter().map(|e| e.transport.name()).collect()))
            .collect();
        routes.sort();
        f.debug_struct("Router")
            .field("routes", &routes)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Endpoint {
    transport: Transport,
    limiter: Limiter,
    breaker: Breaker,
}

impl Router {
    /// Builds the routes. Fallback names must exist; cycles are cut (each transport appears
    /// once per route), though configuration loading already rejects them.
    pub fn new(clock: Clock, entries: Vec<RouteEntry>) -> Result<Router, RouteError> {
        let mut endpoints = HashMap::new();
        let mut fallbacks: HashMap<String, Vec<String>> = HashMap::new();
        for entry in entries {
            let name = entry.transport.name().to_owned();
            let endpoint = Arc::new(Endpoint {
                transport: entry.transport,
                limiter: entry.limiter,
                breaker: Breaker::default(),
            });
            if endpoints.insert(name.clone(), endpoint).is_some() {
                return Err(RouteError::Duplicate(name));
            }
            fallbacks.insert(name, entry.fallback);
        }
        for (name, list) in &fallbacks {
            if let Some(missing) = list.iter().find(|f| !endpoints.contains_key(*f)) {
                return Err(RouteError::UnknownFallback {
                    transport: name.clone(),
                    fallback: missing.clone(),
                });
            }
        }
        let routes = endpoints
            .keys()
            .map(|name| {
                let mut order = Vec::new();
                expand(name, &fallbacks, &mut order);
                let chain = order
                    .iter()
                    .filter_map(|n| endpoints.get(n.as_str()).cloned())
                    .collect();
                (name.clone(), chain)
            })
            .collect();
        Ok(Router {
            clock,
            endpoints,
            routes,
        })
    }

    /// Whether a transport (and so a route) of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.endpoints.contains_key(name)
    }

    /// The transport configured under `name`.
    pub fn transport(&self, name: &str) -> Option<&Transport> {
        self.endpoints.get(name).map(|e| &e.transport)
    }

    /// The transports a send on `route` tries, in order.
    pub fn route(&self, route: &str) -> Vec<&str> {
        self.routes
            .get(route)
            .map(|chain| chain.iter().map(|e| e.transport.name()).collect())
            .unwrap_or_default()
    }

    /// Sends `msg` along `route` (see the module docs). The error, when every transport
    /// failed, is the last transient failure; or, when no transport was even tried because
    /// every circuit is open, a transient error asking to retry when the first one half-opens;
    /// or, when every transport tried had used up its quota, the earliest quota reset.
    pub async fn send(&self, route: &str, msg: &BuiltMessage) -> Result<Sent, SendError> {
        self.send_noting(route, msg, &AtomicBool::new(false)).await
    }

    /// [`Router::send`], setting `handed` just before a transport is first called: until then
    /// (while waiting for a transport's turn) nothing has left the process.
    pub async fn send_noting(
        &self,
        route: &str,
        msg: &BuiltMessage,
        handed: &AtomicBool,
    ) -> Result<Sent, SendError> {
        let Some(chain) = self.routes.get(route) else {
            return Err(SendError::permanent(format!(
                "no transport named `{route}`"
            )));
        };
        let mut transient: Option<SendError> = None;
        let mut deferred: Option<SendError> = None;
        let mut reopens: Option<DateTime<Utc>> = None;
        for (position, endpoint) in chain.iter().enumerate() {
            let name = endpoint.transport.name();
            let attempt = match endpoint.breaker.admit(self.clock.now()) {
                Admission::Go(attempt) => attempt,
                Admission::Skip(Some((until, Reason::Quota))) => {
                    tracing::debug!(transport = name, %until, "quota used up; skipping transport");
                    let earlier = deferred
                        .as_ref()
                        .and_then(|d| d.deferred_until)
                        .is_none_or(|d| until < d);
                    if earlier {
                        deferred = Some(SendError::deferred(
                            format!("{name}: sending quota used up until {until}"),
                            until,
                        ));
                    }
                    continue;
                }
                Admission::Skip(until) => {
                    tracing::debug!(transport = name, "circuit open; skipping transport");
                    if let Some((until, _)) = until {
                        reopens = Some(reopens.map_or(until, |r| r.min(until)));
                    }
                    continue;
                }
            };
            let ticket = Ticket {
                breaker: &endpoint.breaker,
                clock: &self.clock,
                attempt,
                settled: false,
            };
            let permit = endpoint.limiter.acquire(&self.clock).await;
            handed.store(true, Ordering::Release);
            let result = endpoint.transport.send(msg).await;
            drop(permit);
            match result {
                Ok(receipt) => {
                    ticket.succeeded();
                    if position > 0 {
                        tracing::info!(
                            message = %msg.message_id,
                            route,
                            transport = name,
                            "sent through a fallback transport"
                        );
                    }
                    return Ok(Sent {
                        receipt,
                        transport: name.to_owned(),
                    });
                }
                Err(error) if !error.is_transient() => {
                    // The provider answered and works; the message itself was refused.
                    ticket.succeeded();
                    return Err(error);
                }
                Err(error) if error.after_data => {
                    ticket.failed();
                    return Err(error);
                }
                Err(error) => {
                    if let Some(until) = error.deferred_until {
                        ticket.open_until(until);
                        let earlier = deferred
                            .as_ref()
                            .and_then(|d| d.deferred_until)
                            .is_none_or(|d| until < d);
                        if earlier {
                            deferred = Some(error.clone());
                        }
                    } else {
                        ticket.failed();
                        transient = Some(error.clone());
                    }
                    if position + 1 < chain.len() {
                        tracing::warn!(
                            message = %msg.message_id,
                            route,
                            transport = name,
                            error = %error,
                            "transport unavailable; trying the next one"
                        );
                    }
                }
            }
        }
        if let Some(error) = transient {
            return Err(error);
        }
        if let Some(until) = reopens {
            let wait = (until - self.clock.now()).to_std().unwrap_or_default();
            return Err(SendError {
                retry_after: Some(wait),
                ..SendError::transient(format!(
                    "no transport of route `{route}` is available: circuit open after repeated \
                     failures (next probe at {until})"
                ))
            });
        }
        match deferred {
            Some(error) => Err(error),
            None => Err(SendError::transient(format!(
                "no transport of route `{route}` is available: circuit half-open, probe in flight"
            ))),
        }
    }

    /// Shuts every transport down.
    pub async fn shutdown(&self) {
        for endpoint in self.endpoints.values() {
            endpoint.transport.shutdown().await;
        }
    }
}

/// Appends `name` and, depth first, its fallbacks to `order`, each name once.
fn expand(name: &str, fallbacks: &HashMap<String, Vec<String>>, order: &mut Vec<String>) {
    if order.iter().any(|n| n == name) {
        return;
    }
    order.push(name.to_owned());
    for next in fallbacks.get(name).map(Vec::as_slice).unwrap_or_default() {
        expand(next, fallbacks, order);
    }
}

/// A transport's circuit.
#[derive(Debug, Default)]
struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Sends go through; this many transient failures in a row so far.
    Closed { failures: u32 },
    /// Sends skip the transport until `until`.
    Open {
        until: DateTime<Utc>,
        reason: Reason,
    },
    /// One probe is in flight; other sends skip the transport.
    HalfOpen,
}

impl Default for State {
    fn default() -> State {
        State::Closed { failures: 0 }
    }
}

/// Why a circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// Consecutive transient failures.
    Failures,
    /// The provider's quota is used up until the circuit half-opens.
    Quota,
}

/// What a send may do with a transport.
enum Admission {
    /// Go ahead, as a normal send or as the half-open probe.
    Go(Attempt),
    /// Skip it; the circuit half-opens at this instant, and why it is open (`None`: a probe is
    /// in flight).
    Skip(Option<(DateTime<Utc>, Reason)>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Normal,
    Probe,
}

impl Breaker {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self, now: DateTime<Utc>) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Go(Attempt::Normal),
            State::Open { until, .. } if now >= until => {
                *state = State::HalfOpen;
                Admission::Go(Attempt::Probe)
            }
            State::Open { until, reason } => Admission::Skip(Some((until, reason))),
            State::HalfOpen => Admission::Skip(None),
        }
    }

    fn settle(&self, attempt: Attempt, outcome: Outcome, now: DateTime<Utc>) {
        let mut state = self.lock();
        *state = match (outcome, *state) {
            (Outcome::Success, _) => State::Closed { failures: 0 },
            (Outcome::OpenUntil(until), _) => State::Open {
                until,
                reason: Reason::Quota,
            },
            // A probe failed: stay away for another cooldown.
            (Outcome::Failure, _) if attempt == Attempt::Probe => State::Open {
                until: now + COOLDOWN,
                reason: Reason::Failures,
            },
            (Outcome::Failure, State::Closed { failures }) => {
                let failures = failures + 1;
                if failures >= FAILURES_TO_OPEN {
                    tracing::warn!(failures, "transport circuit opened");
                    State::Open {
                        until: now + COOLDOWN,
                        reason: Reason::Failures,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            // A send admitted before the circuit opened failed too: nothing new to learn.
            (Outcome::Failure, other) => other,
        };
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    OpenUntil(DateTime<Utc>),
}

/// An admitted send. Settled explicitly; one dropped unsettled (the send was cancelled, e.g.
/// at shutdown) counts as a failure, so a cancelled probe cannot leave the circuit half-open
/// for ever.
struct Ticket<'a> {
    breaker: &'a Breaker,
    clock: &'a Clock,
    attempt: Attempt,
    settled: bool,
}

impl Ticket<'_> {
    fn succeeded(mut self) {
        self.settle(Outcome::Success);
    }

    fn failed(mut self) {
        self.settle(Outcome::Failure);
    }

    fn open_until(mut self, until: DateTime<Utc>) {
        self.settle(Outcome::OpenUntil(until));
    }

    fn settle(&mut self, outcome: Outcome) {
        self.settled = true;
        self.breaker.settle(self.attempt, outcome, self.clock.now());
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(Outcome::Failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap() + TimeDelta::seconds(seconds)
    }

    fn go(breaker: &Breaker, now: DateTime<Utc>) -> Attempt {
        match breaker.admit(now) {
            Admission::Go(attempt) => attempt,
            Admission::Skip(until) => panic!("skipped until {until:?}"),
        }
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_half_open() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            let attempt = go(&breaker, t(0));
            breaker.settle(attempt, Outcome::Failure, t(0));
        }
        // A success resets the count.
        breaker.settle(go(&breaker, t(0)), Outcome::Success, t(0));
        for _ in 0..FAILURES_TO_OPEN {
            let attempt = go(&breaker, t(1));
            breaker.settle(attempt, Outcome::Failure, t(1));
        }
        assert!(matches!(
            breaker.admit(t(2)),
            Admission::Skip(Some((until, Reason::Failures))) if until == t(31)
        ));

        // Cooldown over: exactly one probe goes through.
        assert!(go(&breaker, t(31)) == Attempt::Probe);
        assert!(matches!(breaker.admit(t(31)), Admission::Skip(None)));
        // The probe fails: open for another cooldown.
        breaker.settle(Attempt::Probe, Outcome::Failure, t(32));
        assert!(matches!(
            breaker.admit(t(40)),
            Admission::Skip(Some((until, Reason::Failures))) if until == t(62)
        ));
        // The next probe succeeds: closed again.
        assert!(go(&breaker, t(62)) == Attempt::Probe);
        breaker.settle(Attempt::Probe, Outcome::Success, t(63));
        assert!(go(&breaker, t(63)) == Attempt::Normal);
    }

    #[test]
    fn a_quota_opens_the_circuit_until_it_resets() {
        let breaker = Breaker::default();
        let attempt = go(&breaker, t(0));
        breaker.settle(attempt, Outcome::OpenUntil(t(3600)), t(0));
        assert!(matches!(
            breaker.admit(t(10)),
            Admission::Skip(Some((until, Reason::Quota))) if until == t(3600)
        ));
        assert!(go(&breaker, t(3600)) == Attempt::Probe);
    }

    #[test]
    fn a_dropped_probe_counts_as_a_failure() {
        let breaker = Breaker::default();
        let clock = Clock::Manual(crate::clock::ManualClock::new(t(0)));
        breaker.settle(Attempt::Normal, Outcome::OpenUntil(t(0)), t(0));
        let attempt = go(&breaker, t(0));
        drop(Ticket {
            breaker: &breaker,
            clock: &clock,
            attempt,
            settled: false,
        });
        assert!(matches!(
            breaker.admit(t(1)),
            Admission::Skip(Some((until, Reason::Failures))) if until == t(30)
        ));
    }

    #[test]
    fn routes_expand_fallbacks_depth_first_once_each() {
        let fallbacks: HashMap<String, Vec<String>> = [
            ("a", vec!["b", "c"]),
            ("b", vec!["d"]),
            ("c", vec!["d"]),
            ("d", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
        let mut order = Vec::new();
        expand("a", &fallbacks, &mut order);
        assert_eq!(order, ["a", "b", "d", "c"]);
    }
}
