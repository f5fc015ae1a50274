//! Stored membership kept current. An event (or a changed contact) re-evaluates that contact
//! alone; a sweep re-evaluates only the contacts whose `segment_due` instant has come (a window
//! running out, an engagement tier lapsing); a paging job recomputes everyone when a definition
//! changes; a scheduled refresh recomputes the population-wide scores (RFM, high-value
//! threshold). Each change of membership is stored with its time and emitted as a
//! `segment_entered` / `segment_exited` event, which starts segment-triggered journeys.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use serde_json::{Value, json};
use sqlx::types::Json;

use super::evaluate::{Fact, Facts, evaluate_all};
use super::profile::{
    LAST_ENGAGED_AT, Observed, PROFILE_VERSION, Profile, ProfileRules, Purchaser, Rfm,
    high_value_threshold, rfm_scores,
};
use super::{ENTERED, EXITED};
use crate::core::Core;
use crate::scheduler::{page_cursor, turn_page};
use crate::store::direct::Direct;
use crate::store::{
    Backend, Contact, Event, FactRead, FactRow, Ids, Job, Membership, Result, StoreError, Tx,
    earliest, job_status,
};
use crate::workflow::engine::Outcome;
use crate::workflow::timing::{next_cron, parse_cron};
use crate::workflow::trigger::{contact_view, on_event as journeys_on_event};

/// Contacts per transaction in sweeps and recomputes.
const BATCH: usize = 500;
/// Purchasers read per page when scoring the population.
const PAGE: i64 = 5000;
/// Recompute batches in flight at once on PostgreSQL.
const IN_FLIGHT: usize = 5;
pub const RECOMPUTE_JOB: &str = "segment_recompute";
/// A recompute's payload key saying how it takes profiles: [`KEEP_PROFILES`], or (absent) rebuilt.
const PROFILES_KEY: &str = "profiles";
/// Profiles as stored: only segment definitions changed, and every event and the scheduled
/// refresh keep stored profiles current, so rebuilding them would find what is stored.
const KEEP_PROFILES: &str = "stored";
pub const REFRESH_JOB: &str = "profile_refresh";
const THRESHOLD_KEY: &str = "profile.high_value_threshold";
const REFRESH_AT_KEY: &str = "profile.refresh_next";
const REFRESHED_KEY: &str = "profile.refreshed_at";

/// Why a contact was re-evaluated; recorded on its membership events as `cause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A new event or a changed contact.
    Event,
    /// Time passed (a window ran out) or population scores changed.
    Sweep,
    /// A definition changed and every contact was recomputed. Segment triggers ignore these
    /// changes, so deploying a new segment does not start journeys for its whole population.
    Recompute,
}

impl Cause {
    fn name(self) -> &'static str {
        match self {
            Cause::Event => "event",
            Cause::Sweep => "sweep",
            Cause::Recompute => "recompute",
        }
    }
}

/// Whether an event of this name changes its contact's profile or segments: then the contact
/// must be read with `Tx::lock_and_get_contact` before [`on_event`].
pub fn evaluates(core: &Core, name: &str) -> bool {
    !matches!(name, ENTERED | EXITED)
        && (core.profile_rules.observes(name) || core.segments.event_names().contains(name))
}

/// Applies a stored event to the contact's profile and segments. `contact` is as read in this
/// transaction with `Tx::lock_and_get_contact` whenever [`evaluates`] says so. Returns the
/// contact as it is now (its profile may have changed), for the journeys the event drives next.
pub async fn on_event(
    tx: &mut Tx,
    core: &Core,
    contact: &Contact,
    event: &Event,
    now: DateTime<Utc>,
) -> Result<Contact> {
    if !evaluates(core, &event.name) {
        return Ok(contact.clone());
    }
    if !core.profile_rules.observes(&event.name) {
        return refresh(tx, core, contact, &[], now).await;
    }
    if !core.segments.event_names().contains(&event.name) {
        // Only the profile reads it: most such events (another page view, a machine open)
        // change nothing a segment reads, and need no read of the contact's facts.
        match fold(core, contact, &[event], now) {
            Fold::Unchanged => return Ok(contact.clone()),
            Fold::Quiet(profile) => {
                let (contact, orders) = with_profile(contact.clone(), &profile);
                tx.store_profiles(&[(contact.id.as_str(), &contact.profile.0, orders)])
                    .await?;
                return Ok(contact);
            }
            Fold::Changed => {}
        }
    }
    refresh(tx, core, contact, &[event], now).await
}

/// What folding new events into a stored profile changes for the contact's segments.
#[derive(Debug, PartialEq)]
enum Fold {
    /// Nothing: the profile is as stored.
    Unchanged,
    /// Only `last_engaged_at` moved, within the same engagement tier (an active reader opening
    /// again), and no segment reads it: the new profile is written alone, and the sweep finds
    /// the later lapse instant when the earlier one comes.
    Quiet(Profile),
    /// The engagement tier, purchases or lifecycle changed: the contact is re-evaluated.
    Changed,
}

/// Folds `events`, which no segment reads, into `contact`'s stored profile.
fn fold(core: &Core, contact: &Contact, events: &[&Event], now: DateTime<Utc>) -> Fold {
    let quiet_allowed = !core.segments.reads_attribute(LAST_ENGAGED_AT);
    fold_with(&core.profile_rules, quiet_allowed, contact, events, now)
}

/// [`fold`], with whether a change of `last_engaged_at` alone may be quiet.
fn fold_with(
    rules: &ProfileRules,
    quiet_allowed: bool,
    contact: &Contact,
    events: &[&Event],
    now: DateTime<Utc>,
) -> Fold {
    let before = Profile::from_json(&contact.profile.0);
    let mut after = before.clone();
    observe_all(&mut after, events, rules);
    if after == before {
        return Fold::Unchanged;
    }
    let same_tier = after.last_engaged_at.is_some()
        && after.engagement_at(contact.created_at, 0, now, rules).0 == before.engagement;
    if quiet_allowed
        && same_tier
        && after.purchase == before.purchase
        && after.lifecycle == before.lifecycle
    {
        Fold::Quiet(after)
    } else {
        Fold::Changed
    }
}

/// `contact` with `profile` as its stored profile, and the order count written beside it.
fn with_profile(mut contact: Contact, profile: &Profile) -> (Contact, i64) {
    contact.profile = Json(profile.to_json());
    (contact, profile.purchase.orders)
}

/// Folds stored events into `profile`.
fn observe_all(profile: &mut Profile, events: &[&Event], rules: &ProfileRules) {
    for e in events {
        profile.observe(
            &Observed {
                name: &e.name,
                properties: &e.properties.0,
                occurred_at: e.occurred_at,
            },
            rules,
        );
    }
}

/// Applies events that only the profile reads (no segment reads them and nothing else reacts),
/// stored in bulk for several contacts, as [`on_event`] applies one: unchanged profiles are
/// left alone, quiet changes written together, and any other change re-evaluates the contact.
pub async fn observe_batch(
    tx: &mut Tx,
    core: &Core,
    events: &[Event],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut by_contact: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| core.profile_rules.observes(&e.name))
    {
        by_contact.entry(&e.contact_id).or_default().push(e);
    }
    let ids: Vec<&str> = by_contact.keys().copied().collect();
    // Locked as read, so the profiles built on here are the latest committed.
    let contacts = tx.lock_and_get_contacts(&ids).await?;
    let mut quiet = Vec::new();
    for contact in contacts {
        let Some(events) = by_contact.get(contact.id.as_str()) else {
            continue;
        };
        match fold(core, &contact, events, now) {
            Fold::Unchanged => {}
            Fold::Quiet(profile) => quiet.push(with_profile(contact, &profile)),
            Fold::Changed => {
                refresh(tx, core, &contact, events, now).await?;
            }
        }
    }
    let rows: Vec<(&str, &Value, i64)> = quiet
        .iter()
        .map(|(c, o)| (c.id.as_str(), &c.profile.0, *o))
        .collect();
    tx.store_profiles(&rows).await
}

/// Re-evaluates a contact whose attributes changed: `contact` as this transaction stores it,
/// built on a read with `Tx::lock_and_get_contact`.
pub async fn on_contact_changed(
    tx: &mut Tx,
    core: &Core,
    contact: &Contact,
    now: DateTime<Utc>,
) -> Result<Contact> {
    if core.segments.is_empty() {
        return Ok(contact.clone());
    }
    refresh(tx, core, contact, &[], now).await
}

/// Folds `observed` into the contact's profile and re-evaluates its segments. Every caller
/// read `contact` locked in this transaction (PostgreSQL serializes concurrent evaluations of
/// one contact on that lock): built on an earlier, unlocked read, a concurrent event's profile
/// change committed in between would be lost, and a change emitted twice.
async fn refresh(
    tx: &mut Tx,
    core: &Core,
    contact: &Contact,
    observed: &[&Event],
    now: DateTime<Utc>,
) -> Result<Contact> {
    let mut profile = Profile::from_json(&contact.profile.0);
    observe_all(&mut profile, observed, &core.profile_rules);
    let ids = [contact.id.clone()];
    let reads = fact_reads(core, false, now);
    // The sent count decides only for a contact who never engaged, the threshold only for a
    // purchaser: read with the rest when needed.
    let sends = profile.last_engaged_at.is_none();
    let meta = threshold_key(core).filter(|_| profile.purchase.orders > 0);
    let inputs = tx
        .segment_inputs(&ids, &as_reads(&reads), sends, meta)
        .await?;
    let mut facts = group_facts(inputs.facts);
    let members = by_contact(inputs.members);
    let state = ContactState::take(&contact.id, &mut facts, &members, &inputs.dues);
    let sends = inputs.sends.get(&contact.id).copied().unwrap_or(0);
    let high_value = threshold(core, inputs.meta.as_deref());
    let decision = decide(core, contact, profile, &state, sends, high_value, now);
    store(tx, core, std::slice::from_ref(&decision), Cause::Event, now).await?;
    Ok(decision.contact)
}

/// What is stored about one contact that segments read.
#[derive(Default)]
struct ContactState {
    events: HashMap<String, Vec<Fact>>,
    members: BTreeSet<String>,
    /// The next due instant as stored.
    due: Option<DateTime<Utc>>,
}

impl ContactState {
    /// Contact `id`'s part of what [`Tx::segment_inputs`] read, grouped by contact.
    fn take(
        id: &str,
        facts: &mut HashMap<String, HashMap<String, Vec<Fact>>>,
        members: &HashMap<String, BTreeSet<String>>,
        dues: &HashMap<String, DateTime<Utc>>,
    ) -> ContactState {
        ContactState {
            events: facts.remove(id).unwrap_or_default(),
            members: members.get(id).cloned().unwrap_or_default(),
            due: dues.get(id).copied(),
        }
    }
}

fn group_facts(rows: Vec<FactRow>) -> HashMap<String, HashMap<String, Vec<Fact>>> {
    let mut by_contact: HashMap<String, HashMap<String, Vec<Fact>>> = HashMap::new();
    for (contact, name, occurred_at, properties) in rows {
        by_contact
            .entry(contact)
            .or_default()
            .entry(name)
            .or_default()
            .push(Fact {
                occurred_at,
                properties: properties.map_or(Value::Null, |p| p.0),
            });
    }
    by_contact
}

fn by_contact(memberships: Vec<Membership>) -> HashMap<String, BTreeSet<String>> {
    let mut members: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (contact, segment, _) in memberships {
        members.entry(contact).or_default().insert(segment);
    }
    members
}

/// The `meta` key of the high-value threshold when it comes from the last refresh (none when
/// the amount is configured).
fn threshold_key(core: &Core) -> Option<&'static str> {
    match core.profile_rules.high_value_total {
        Some(_) => None,
        None => Some(THRESHOLD_KEY),
    }
}

/// The high-value threshold in force: the configured amount, or the top share as of the last
/// refresh (`stored`, read from [`threshold_key`]).
fn threshold(core: &Core, stored: Option<&str>) -> Option<f64> {
    core.profile_rules
        .high_value_total
        .or_else(|| stored.and_then(|v| v.parse::<f64>().ok()))
}

/// What re-evaluating one contact decided.
struct Decision {
    /// The contact with its settled profile.
    contact: Contact,
    profile_changed: bool,
    orders: i64,
    entered: Vec<String>,
    exited: Vec<String>,
    /// The next instant to look again without a new event.
    due: Option<DateTime<Utc>>,
    /// `due` is not what is stored.
    due_changed: bool,
}

/// Settles the profile and evaluates every segment against the contact's stored state. Pure:
/// `sends` and `high_value` were read by the caller.
fn decide(
    core: &Core,
    contact: &Contact,
    mut profile: Profile,
    state: &ContactState,
    sends: i64,
    high_value: Option<f64>,
    now: DateTime<Utc>,
) -> Decision {
    let tier_change = profile.settle(
        contact.created_at,
        sends,
        high_value,
        now,
        &core.profile_rules,
    );
    let mut contact = contact.clone();
    let stored = profile.to_json();
    let profile_changed = stored != contact.profile.0;
    contact.profile = Json(stored);
    let view = contact_view(&contact);
    let evaluation = evaluate_all(
        &core.segments,
        &Facts {
            contact_id: &contact.id,
            view: &view,
            events: &state.events,
        },
        now,
    );
    let due = earliest(evaluation.next_change, tier_change);
    Decision {
        entered: evaluation
            .members
            .difference(&state.members)
            .cloned()
            .collect(),
        exited: state
            .members
            .difference(&evaluation.members)
            .cloned()
            .collect(),
        due,
        due_changed: due != state.due,
        orders: profile.purchase.orders,
        profile_changed,
        contact,
    }
}

/// Stores decisions with as few statements as possible: changed profiles, membership rows, one
/// `segment_entered`/`segment_exited` event per change (applied to journeys unless the cause is
/// a recompute), and each contact's next due instant.
async fn store<D: Borrow<Decision>>(
    tx: &mut Tx,
    core: &Core,
    decisions: &[D],
    cause: Cause,
    now: DateTime<Utc>,
) -> Result<()> {
    let decisions = || decisions.iter().map(Borrow::borrow);
    let profiles: Vec<(&str, &Value, i64)> = decisions()
        .filter(|d| d.profile_changed)
        .map(|d| (d.contact.id.as_str(), &d.contact.profile.0, d.orders))
        .collect();
    // Written in one round trip where the backend allows (`Tx::run_all`): the profiles,
    // memberships, their events and due instants are different rows.
    let mut writes = tx.profile_writes(&profiles);
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut events = Vec::new();
    for d in decisions() {
        for (name, segments) in [(ENTERED, &d.entered), (EXITED, &d.exited)] {
            for segment in segments {
                events.push(Event {
                    id: uuid::Uuid::now_v7().to_string(),
                    contact_id: d.contact.id.clone(),
                    name: name.to_owned(),
                    properties: Json(json!({ "segment": segment, "cause": cause.name() })),
                    occurred_at: now,
                    received_at: now,
                });
            }
        }
        added.extend(
            d.entered
                .iter()
                .map(|s| (s.as_str(), d.contact.id.as_str())),
        );
        removed.extend(d.exited.iter().map(|s| (s.as_str(), d.contact.id.as_str())));
    }
    writes.extend(tx.remove_members(&removed));
    writes.extend(tx.add_members(&added, now));
    writes.extend(tx.event_imports(&events, Ids::Fresh));
    let dues: Vec<(&str, Option<DateTime<Utc>>)> = decisions()
        .filter(|d| d.due_changed)
        .map(|d| (d.contact.id.as_str(), d.due))
        .collect();
    writes.extend(tx.due_writes(&dues));
    tx.run_all(writes).await?;
    // Journeys after the writes: their conditions may read the new memberships.
    if cause != Cause::Recompute {
        for event in &events {
            if let Some(d) = decisions().find(|d| d.contact.id == event.contact_id) {
                journeys_on_event(
                    tx,
                    &core.workflows,
                    &d.contact,
                    event,
                    now,
                    core.max_attempts,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// How a batch takes its contacts' profiles.
#[derive(Clone, Copy)]
enum Profiles<'a> {
    /// As stored.
    Stored,
    /// Rebuilt from the stored events, with the scores of this population scoring.
    Rebuilt(&'a Scoring),
}

impl<'a> Profiles<'a> {
    /// Rebuilt with `scoring` when there is one, otherwise as stored.
    fn of(scoring: Option<&'a Scoring>) -> Profiles<'a> {
        scoring.map_or(Profiles::Stored, Profiles::Rebuilt)
    }
}

/// Re-evaluates `contacts` in one transaction.
async fn evaluate_batch(
    tx: &mut Tx,
    core: &Core,
    contacts: &[Contact],
    profiles: Profiles<'_>,
    cause: Cause,
    now: DateTime<Utc>,
) -> Result<()> {
    let (decisions, _) = decide_batch(tx, core, contacts, profiles, now).await?;
    store(tx, core, &decisions, cause, now).await
}

/// Reads what `contacts` are evaluated on and decides each, writing nothing. Also returns the
/// memberships the decisions were taken against.
async fn decide_batch(
    tx: &mut Tx,
    core: &Core,
    contacts: &[Contact],
    profiles: Profiles<'_>,
    now: DateTime<Utc>,
) -> Result<(Vec<Decision>, HashMap<String, BTreeSet<String>>)> {
    let ids: Vec<String> = contacts.iter().map(|c| c.id.clone()).collect();
    let rebuild = matches!(profiles, Profiles::Rebuilt(_));
    let reads = fact_reads(core, rebuild, now);
    let meta = match profiles {
        Profiles::Stored => threshold_key(core),
        Profiles::Rebuilt(_) => None,
    };
    let inputs = tx
        .segment_inputs(&ids, &as_reads(&reads), true, meta)
        .await?;
    let mut facts = group_facts(inputs.facts);
    let members = by_contact(inputs.members);
    let (sends, dues) = (inputs.sends, inputs.dues);
    let high_value = match profiles {
        Profiles::Stored => threshold(core, inputs.meta.as_deref()),
        Profiles::Rebuilt(scoring) => scoring.threshold,
    };
    let states: Vec<ContactState> = contacts
        .iter()
        .map(|c| ContactState::take(&c.id, &mut facts, &members, &dues))
        .collect();
    let profiles: Vec<Profile> = match profiles {
        Profiles::Rebuilt(scoring) => {
            let mut rebuilt: Vec<Profile> = contacts
                .iter()
                .zip(&states)
                .map(|(contact, state)| rebuild_profile(core, contact, &state.events, scoring))
                .collect();
            reach(tx, core, &ids, &mut rebuilt).await?;
            rebuilt
        }
        Profiles::Stored => contacts
            .iter()
            .map(|c| Profile::from_json(&c.profile.0))
            .collect(),
    };
    let mut decisions = Vec::with_capacity(contacts.len());
    for ((contact, state), profile) in contacts.iter().zip(&states).zip(profiles) {
        let sent = sends.get(&contact.id).copied().unwrap_or(0);
        decisions.push(decide(core, contact, profile, state, sent, high_value, now));
    }
    Ok((decisions, members))
}

/// Which events to read, by name: since when, and whether with properties. Segments need each
/// name back to their longest window; rebuilding profiles needs every order (the last
/// engagement and the furthest lifecycle stage are read on their own, see [`reach`]).
fn fact_reads(
    core: &Core,
    rebuild: bool,
    now: DateTime<Utc>,
) -> Vec<(String, DateTime<Utc>, bool)> {
    let ever = DateTime::<Utc>::UNIX_EPOCH;
    let mut reads: HashMap<String, (DateTime<Utc>, bool)> = core
        .segments
        .reads()
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                (r.horizon.map_or(ever, |h| now - h), r.properties),
            )
        })
        .collect();
    if rebuild {
        reads.insert(core.profile_rules.order_event.clone(), (ever, true));
    }
    let mut reads: Vec<(String, DateTime<Utc>, bool)> =
        reads.into_iter().map(|(n, (t, p))| (n, t, p)).collect();
    reads.sort_by(|a, b| a.0.cmp(&b.0));
    reads
}

fn as_reads(reads: &[(String, DateTime<Utc>, bool)]) -> Vec<FactRead<'_>> {
    reads
        .iter()
        .map(|(name, since, properties)| FactRead {
            name,
            since: *since,
            properties: *properties,
        })
        .collect()
}

/// The profile from the contact's events alone, keeping the population scores of `scoring`;
/// [`reach`] completes it. Engagement comes from there only: engagement events among `events`
/// (read for segments, perhaps without the properties that tell machine opens apart) do not
/// count.
fn rebuild_profile(
    core: &Core,
    contact: &Contact,
    events: &HashMap<String, Vec<Fact>>,
    scoring: &Scoring,
) -> Profile {
    let stored = Profile::from_json(&contact.profile.0);
    let mut profile = Profile {
        rfm: scoring.of(&contact.id).cloned().or(stored.rfm),
        ..Profile::default()
    };
    for (name, facts) in events {
        for f in facts {
            profile.observe(
                &Observed {
                    name,
                    properties: &f.properties,
                    occurred_at: f.occurred_at,
                },
                &core.profile_rules,
            );
        }
    }
    profile.last_engaged_at = None;
    profile
}

/// Completes rebuilt profiles with what is read by index probes rather than event by event:
/// the last human open or click (`Tx::last_engagements`), and the furthest lifecycle stage any
/// event leads to (`Tx::first_tiers_reached`), probing for each contact only the stages beyond
/// the one its events read so far (its orders, say) already reach. `profiles[i]` is contact
/// `ids[i]`'s.
async fn reach(tx: &mut Tx, core: &Core, ids: &[String], profiles: &mut [Profile]) -> Result<()> {
    let engaged = tx.last_engagements(ids).await?;
    let tiers = core.profile_rules.stage_tiers();
    let names: Vec<&[&str]> = tiers.iter().map(|(_, names)| names.as_slice()).collect();
    // Tiers run furthest first, so the ones worth probing are a prefix.
    let beyond: Vec<(&str, usize)> = ids
        .iter()
        .zip(profiles.iter())
        .map(|(id, p)| {
            let further = tiers.iter().take_while(|(s, _)| Some(*s) > p.lifecycle);
            (id.as_str(), further.count())
        })
        .filter(|(_, further)| *further > 0)
        .collect();
    let stages = tx.first_tiers_reached(&beyond, &names).await?;
    for (id, profile) in ids.iter().zip(profiles.iter_mut()) {
        profile.last_engaged_at = engaged.get(id).copied();
        let reached = stages.get(id).map(|&i| tiers[i].0);
        profile.lifecycle = profile.lifecycle.max(reached);
    }
    Ok(())
}

/// Re-evaluates every contact whose due instant has come. Returns how many were looked at.
pub async fn sweep(core: &Core) -> Result<usize> {
    // PostgreSQL works on two transactions at once (a sweep batch is mostly server time);
    // SQLite has one writer.
    let batches = match core.store.backend() {
        Backend::Sqlite => 1,
        Backend::Postgres => 2,
    };
    let mut seen = 0;
    loop {
        let now = core.clock.now();
        let due = core
            .store
            .due_segment_contacts(now, (batches * BATCH) as i64)
            .await?;
        if due.is_empty() {
            return Ok(seen);
        }
        seen += due.len();
        let mut first = due;
        let second = first.split_off(first.len().min(BATCH));
        let (first, second) = tokio::join!(
            sweep_in_group(core, first, now),
            sweep_in_group(core, second, now)
        );
        first?;
        second?;
    }
}

/// Sweeps `due` in a grouped write: on SQLite it runs on the writer connection directly.
async fn sweep_in_group(core: &Core, due: Vec<String>, now: DateTime<Utc>) -> Result<()> {
    if due.is_empty() {
        return Ok(());
    }
    let due = Arc::new(due);
    core.group
        .run(core, &core.store, move |core, tx| {
            let due = Arc::clone(&due);
            Box::pin(async move { sweep_batch(tx, core, &due, now).await })
        })
        .await
}

/// Re-evaluates the due contacts `due` in `tx`; those that no longer exist are no longer due.
async fn sweep_batch(tx: &mut Tx, core: &Core, due: &[String], now: DateTime<Utc>) -> Result<()> {
    tx.plan_for_batches().await?;
    let ids: Vec<&str> = due.iter().map(String::as_str).collect();
    let contacts = tx.lock_and_get_contacts(&ids).await?;
    let gone: Vec<(&str, Option<DateTime<Utc>>)> = ids
        .iter()
        .filter(|id| {
            contacts
                .binary_search_by(|c| c.id.as_str().cmp(id))
                .is_err()
        })
        .map(|id| (*id, None))
        .collect();
    tx.set_segment_dues(&gone).await?;
    evaluate_batch(tx, core, &contacts, Profiles::Stored, Cause::Sweep, now).await
}

fn job(kind: &str, now: DateTime<Utc>, max_attempts: i64) -> Job {
    Job {
        id: uuid::Uuid::now_v7().to_string(),
        kind: kind.to_owned(),
        journey_id: None,
        payload: Json(json!({ "cursor": "" })),
        status: job_status::QUEUED.to_owned(),
        run_at: now,
        attempts: 0,
        max_attempts,
        locked_by: None,
        locked_until: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

/// Brings stored segment state in line with the loaded definitions: a new or changed segment
/// (or profile rules) queues a recompute of every contact; removed segments are forgotten.
pub async fn sync_definitions(core: &Core) -> Result<()> {
    let now = core.clock.now();
    let mut tx = core.store.write().await?;
    let mut changed = false;
    let mut names = Vec::new();
    for def in core.segments.iter() {
        names.push(def.name.clone());
        changed |= tx
            .claim_segment_spec(&def.name, &core.segments.spec(&def.name), now)
            .await?;
    }
    // The profile rules are stored like a segment, so changing them (or how profiles are
    // computed) rebuilds profiles.
    let rules = format!("v{PROFILE_VERSION} {:?}", core.profile_rules);
    names.push("(profile)".to_owned());
    let rules_changed = tx.claim_segment_spec("(profile)", &rules, now).await?;
    changed |= rules_changed;
    changed |= tx.retain_segment_specs(&names).await?;
    if changed {
        let mut recompute = job(RECOMPUTE_JOB, now, core.max_attempts);
        if !rules_changed {
            recompute.payload.0[PROFILES_KEY] = json!(KEEP_PROFILES);
        }
        tx.insert_job(&recompute).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Queues the population refresh when its cron tick is due; the tick advances by
/// compare-and-set, so one node queues it.
pub async fn tick_refresh(core: &Core) -> Result<bool> {
    let now = core.clock.now();
    let Ok(cron) = parse_cron(&core.profile_rules.refresh) else {
        return Ok(false);
    };
    let mut tx = core.store.write().await?;
    let stored = tx.meta(REFRESH_AT_KEY).await?;
    let due = stored
        .as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    let queued = match due {
        Some(at) if at > now => false,
        _ => {
            let next = next_cron(&cron, chrono_tz::UTC, now).unwrap_or(now);
            let won = tx
                .advance_meta(REFRESH_AT_KEY, stored.as_deref(), &next.to_rfc3339())
                .await?;
            // The first tick only schedules; later ones refresh.
            if won && due.is_some() {
                tx.insert_job(&job(REFRESH_JOB, now, core.max_attempts))
                    .await?;
            }
            won && due.is_some()
        }
    };
    tx.commit().await?;
    Ok(queued)
}

/// What a recompute rewrites in bulk.
const RECOMPUTED_TABLES: &[&str] = &["contacts", "events", "segment_members", "segment_due"];
/// What a population refresh rewrites in bulk.
const REFRESHED_TABLES: &[&str] = &["contacts", "segment_due"];

/// Runs a recompute or refresh job.
pub async fn run_job(core: &Core, job: &Job) -> Result<Outcome> {
    let (outcome, rewritten) = match job.kind.as_str() {
        RECOMPUTE_JOB => (recompute(core, job).await?, RECOMPUTED_TABLES),
        _ => (refresh_population(core, job).await?, REFRESHED_TABLES),
    };
    if matches!(outcome, Outcome::Done) {
        // Its hundreds of thousands of rows are in the WAL: copied now, they are not left to
        // the commits of the next events.
        core.store.catch_up_checkpoints().await;
        core.store.analyze(rewritten).await?;
    }
    Ok(outcome)
}

/// Recomputes every contact's memberships, one batch per transaction with the cursor stored
/// alongside: on the stored profiles when only segments changed ([`KEEP_PROFILES`]), otherwise
/// with every profile rebuilt from the stored events (scores included, see [`score_orders`]).
async fn recompute(core: &Core, job: &Job) -> Result<Outcome> {
    // Wall time for the log lines only; it never decides anything.
    let started = std::time::Instant::now();
    let keep = job.payload.0.get(PROFILES_KEY).and_then(Value::as_str) == Some(KEEP_PROFILES);
    let scoring = match keep {
        true => {
            tracing::info!("recompute: memberships on the stored profiles");
            None
        }
        false => {
            let scoring = Arc::new(score_orders(core).await?);
            tracing::info!(
                purchasers = scoring.purchasers.len(),
                scored_ms = started.elapsed().as_millis() as u64,
                "recompute: orders scored, recomputing profiles and memberships"
            );
            Some(scoring)
        }
    };
    let outcome = match core.store.backend() {
        Backend::Sqlite => recompute_read_ahead(core, job, scoring).await?,
        Backend::Postgres => recompute_in_flight(core, job, scoring.as_deref()).await?,
    };
    if outcome == Outcome::Done {
        tracing::info!(
            profiles = if keep { "stored" } else { "rebuilt" },
            total_ms = started.elapsed().as_millis() as u64,
            "recompute finished"
        );
    }
    Ok(outcome)
}

/// SQLite: the next batch is read and decided on a reader connection while the writer stores
/// the current one (see [`Ahead`]).
async fn recompute_read_ahead(
    core: &Core,
    job: &Job,
    scoring: Option<Arc<Scoring>>,
) -> Result<Outcome> {
    let mut payload = job.payload.0.clone();
    let mut batch = Ahead::read(core, &scoring, page_cursor(&payload)).await?;
    loop {
        // Only a full batch can have one after it.
        let last = (batch.contacts.len() == BATCH)
            .then(|| batch.contacts.last().map(|c| c.id.clone()))
            .flatten();
        let read_next = async {
            match last {
                Some(last) => Ahead::read(core, &scoring, &last).await.map(Some),
                None => Ok(None),
            }
        };
        // The writes run on the writer thread, the reads here, side by side.
        let job = job.clone();
        let write = core.on_writer(move |core| async move {
            let stored = batch.write(&core, &job, &mut payload).await?;
            Ok((stored, payload))
        });
        let (written, next) = tokio::join!(write, read_next);
        let (stored, moved) = written?;
        payload = moved;
        if let Some(outcome) = stored {
            return Ok(outcome);
        }
        let Some(next) = next? else {
            // Not reached: only a full batch leaves the job running, and it reads the next.
            return Ok(Outcome::Done);
        };
        batch = next;
    }
}

/// PostgreSQL: several batches in flight, each read, decided and stored in a transaction of
/// its own, so the server works on one while another waits on a commit or on Herald (one batch
/// is mostly server time). A batch covers a fixed range of ids and starts as soon as the oldest
/// in flight is done, not when a whole group is; each turns the page only after the one before
/// committed, so the stored cursor never passes a batch that did not land.
async fn recompute_in_flight(core: &Core, job: &Job, scoring: Option<&Scoring>) -> Result<Outcome> {
    // Each batch holds a pooled connection until it commits, and the next batch's start is
    // read on one more while they wait: with every connection held, that read would wait for
    // batches that wait for it (the pool has at least two).
    let pool = usize::try_from(core.settings.database.max_connections).unwrap_or(usize::MAX);
    let limit = IN_FLIGHT.min(pool.max(2) - 1);
    let mut cursor = page_cursor(&job.payload.0).to_owned();
    let mut in_flight = FuturesOrdered::new();
    let mut before: Option<tokio::sync::oneshot::Receiver<()>> = None;
    let mut last_queued = false;
    loop {
        while !last_queued && in_flight.len() < limit {
            let mut tx = core.store.read().await?;
            let end = tx.page_end(&cursor, BATCH).await?;
            tx.commit().await?;
            let (done, after_this) = tokio::sync::oneshot::channel();
            let after = before.replace(after_this);
            let from = std::mem::replace(&mut cursor, end.clone().unwrap_or_default());
            last_queued = end.is_none();
            let mut payload = job.payload.0.clone();
            in_flight.push_back(async move {
                let range = (from.as_str(), end.as_deref());
                range_batch(core, job, scoring, &mut payload, range, after, Some(done)).await
            });
        }
        match in_flight.next().await {
            Some(batch) => {
                if let Some(outcome) = batch? {
                    return Ok(outcome);
                }
            }
            // Only when the job had no contacts left to page through.
            None => return Ok(Outcome::Done),
        }
    }
}

/// Recomputes the contacts with ids in `(from, to]` (to the end without `to`) in one
/// transaction. Waits for `after` (the batch before committed) before turning the page, and
/// says so on `done` once committed. `Some` when the job is over.
async fn range_batch(
    core: &Core,
    job: &Job,
    scoring: Option<&Scoring>,
    payload: &mut Value,
    (from, to): (&str, Option<&str>),
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<Option<Outcome>> {
    let now = core.clock.now();
    let mut tx = core.store.write().await?;
    tx.plan_for_batches().await?;
    let contacts = tx.lock_contacts_in(from, to).await?;
    let profiles = Profiles::of(scoring);
    let (decisions, _) = decide_batch(&mut tx, core, &contacts, profiles, now).await?;
    store(&mut tx, core, &decisions, Cause::Recompute, now).await?;
    if let Some(after) = after
        && after.await.is_err()
    {
        // The batch before did not land; this one is done again when the job is retried.
        tx.rollback().await?;
        return Ok(Some(Outcome::LeaseLost));
    }
    let last = to.or(contacts.last().map(|c| c.id.as_str()));
    let finish = to.is_none().then_some(scoring);
    let over = end_batch(tx, core, job, payload, last, finish, now).await?;
    if let Some(done) = done {
        // Nobody waits when the batch after has failed already.
        let _ = done.send(());
    }
    Ok(over)
}

/// Ends a recompute batch's write transaction: renews the lease with the cursor moved past
/// `last`, and when no batch comes after (`finish` is `Some`) finishes the job, recording the
/// job's scoring if it rebuilt profiles: it scored every purchaser, so no refresh follows.
/// `Some` when the job is over.
async fn end_batch(
    mut tx: Tx,
    core: &Core,
    job: &Job,
    payload: &mut Value,
    last: Option<&str>,
    finish: Option<Option<&Scoring>>,
    now: DateTime<Utc>,
) -> Result<Option<Outcome>> {
    if !turn_page(&mut tx, core, job, payload, last, now).await? {
        tx.rollback().await?;
        return Ok(Some(Outcome::LeaseLost));
    }
    let Some(scoring) = finish else {
        tx.commit().await?;
        return Ok(None);
    };
    if let Some(scoring) = scoring {
        record_scoring(&mut tx, scoring).await?;
    }
    tx.finish_job(&job.id, &core.worker_id, job_status::DONE, None, now)
        .await?;
    tx.commit().await?;
    core.wake_scheduler();
    Ok(Some(Outcome::Done))
}

/// Evaluates `$read` (a future using `$tx: &mut Tx`) in a read transaction on a SQLite reader
/// connection used directly (see `store::direct`): through sqlx each of its rows would cross to
/// the connection's thread. Reads through sqlx on PostgreSQL, and again through sqlx when a read
/// is not written for the direct connection. A macro, not a function taking an async closure:
/// such a closure's future cannot be shown to be `Send` for the job it runs in.
macro_rules! on_reader {
    ($core:expr, |$tx:ident| $read:expr) => {
        async {
            let core: &Core = $core;
            if let Some(mut conn) = core.store.reader_connection().await? {
                let mut handle = conn.lock_handle().await?;
                // Declared after `handle`, so dropped (rolled back, unless committed) before it.
                let mut direct = Tx::Direct(Direct::begin_read(&mut handle)?);
                let $tx = &mut direct;
                match $read {
                    Err(StoreError::Indirect(at)) => {
                        tracing::debug!(at, "read not direct; reading through sqlx");
                    }
                    done => {
                        direct.commit().await?;
                        return done;
                    }
                }
            }
            let mut through_sqlx = core.store.read().await?;
            let $tx = &mut through_sqlx;
            let done = $read?;
            through_sqlx.commit().await?;
            Ok(done)
        }
    };
}

/// A recompute batch read and decided on a snapshot, ahead of its write transaction. What
/// changed for one of its contacts in between is found again in the write transaction and
/// that contact decided anew there: a newer event (events are numbered in the order they are
/// stored), a changed contact row or profile, or a changed membership.
struct Ahead {
    /// The recompute's scoring when it rebuilds profiles.
    scoring: Option<Arc<Scoring>>,
    contacts: Vec<Contact>,
    decisions: Vec<Decision>,
    members: HashMap<String, BTreeSet<String>>,
    /// The newest event in the snapshot.
    events_seen: i64,
    now: DateTime<Utc>,
}

impl Ahead {
    /// Reads on a reader connection (see `on_reader!`): a batch reads tens of thousands of
    /// rows.
    async fn read(core: &Core, scoring: &Option<Arc<Scoring>>, cursor: &str) -> Result<Ahead> {
        let now = core.clock.now();
        on_reader!(core, |tx| Ahead::read_in(tx, core, scoring, cursor, now)
            .await)
        .await
    }

    async fn read_in(
        tx: &mut Tx,
        core: &Core,
        scoring: &Option<Arc<Scoring>>,
        cursor: &str,
        now: DateTime<Utc>,
    ) -> Result<Ahead> {
        // Only on SQLite (see `recompute`), where events are numbered.
        let events_seen = tx.newest_event_number().await?.unwrap_or_default();
        let contacts = tx.contacts_after(cursor, BATCH as i64, false).await?;
        let profiles = Profiles::of(scoring.as_deref());
        let (decisions, members) = decide_batch(tx, core, &contacts, profiles, now).await?;
        Ok(Ahead {
            scoring: scoring.clone(),
            contacts,
            decisions,
            members,
            events_seen,
            now,
        })
    }

    /// Stores the batch in a write transaction on the writer connection used directly (or
    /// through sqlx, if a statement is not written for it), deciding anew the contacts that
    /// changed since it was read.
    async fn write(self, core: &Core, job: &Job, payload: &mut Value) -> Result<Option<Outcome>> {
        {
            let (mut conn, prepared) = core.store.writer_connection().await?;
            let mut handle = conn.lock_handle().await?;
            // Declared after `handle`, so dropped (rolled back, unless committed) before it.
            let tx = Tx::Direct(Direct::begin(&mut handle, &prepared)?);
            match self.write_in(tx, core, job, payload).await {
                Err(StoreError::Indirect(at)) => {
                    tracing::debug!(at, "recompute write not direct; writing through sqlx");
                }
                written => return written,
            }
        }
        let tx = core.store.write().await?;
        self.write_in(tx, core, job, payload).await
    }

    async fn write_in(
        &self,
        mut tx: Tx,
        core: &Core,
        job: &Job,
        payload: &mut Value,
    ) -> Result<Option<Outcome>> {
        let now = self.now;
        let ids: Vec<String> = self.contacts.iter().map(|c| c.id.clone()).collect();
        let mut changed: BTreeSet<String> = tx
            .contacts_with_events_after(self.events_seen)
            .await?
            .into_iter()
            .collect();
        let members = by_contact(tx.memberships(&ids).await?);
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let fresh: HashMap<String, Contact> = tx
            .contacts_by_ids(&id_refs)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        for contact in &self.contacts {
            let id = &contact.id;
            let moved = fresh.get(id).is_none_or(|f| {
                f.updated_at != contact.updated_at || f.profile.0 != contact.profile.0
            });
            if moved || members.get(id) != self.members.get(id) {
                changed.insert(id.clone());
            }
        }
        let again: Vec<Contact> = self
            .contacts
            .iter()
            .filter(|c| changed.contains(&c.id))
            .filter_map(|c| fresh.get(&c.id).cloned())
            .collect();
        let decided_again = match again.is_empty() {
            true => Vec::new(),
            false => {
                let profiles = Profiles::of(self.scoring.as_deref());
                decide_batch(&mut tx, core, &again, profiles, now).await?.0
            }
        };
        let decisions: Vec<&Decision> = self
            .decisions
            .iter()
            .filter(|d| !changed.contains(&d.contact.id))
            .chain(&decided_again)
            .collect();
        store(&mut tx, core, &decisions, Cause::Recompute, now).await?;
        let last = self.contacts.last().map(|c| c.id.as_str());
        let finish = (self.contacts.len() < BATCH).then_some(self.scoring.as_deref());
        end_batch(tx, core, job, payload, last, finish, now).await
    }
}

/// Recomputes RFM scores and the high-value threshold over all purchasers, stores the profiles
/// that changed and marks those contacts due, so the sweep re-evaluates their segments. Also
/// marks contacts who received mail since the last refresh and never engaged, for dormancy.
///
/// Two passes over the purchasers, a page at a time: the first keeps only what scoring needs
/// (tens of bytes per purchaser, not the profile), the second applies the scores to each
/// profile as stored at that moment, in the transaction that writes it back.
async fn refresh_population(core: &Core, job: &Job) -> Result<Outcome> {
    let now = core.clock.now();
    // Wall time for the log line only; it never decides anything.
    let started = std::time::Instant::now();
    let scoring = Arc::new(score_population(core, now).await?);
    let scored = started.elapsed();
    let changed = match core.store.backend() {
        Backend::Sqlite => rescore_read_ahead(core, &scoring, now).await?,
        Backend::Postgres => rescore_locked(core, &scoring, now).await?,
    };
    let mut tx = core.store.write().await?;
    let since = tx
        .meta(REFRESHED_KEY)
        .await?
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| t.with_timezone(&Utc));
    tx.mark_unengaged_recipients_due(since, now).await?;
    record_scoring(&mut tx, &scoring).await?;
    tx.finish_job(&job.id, &core.worker_id, job_status::DONE, None, now)
        .await?;
    tx.commit().await?;
    core.wake_scheduler();
    tracing::info!(
        purchasers = scoring.purchasers.len(),
        read_and_scored_ms = scored.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        profiles_changed = changed,
        "population scores refreshed"
    );
    Ok(Outcome::Done)
}

/// The refresh's first pass: every purchaser, a page at a time, keeping only what scoring
/// needs, then the RFM scores and the high-value threshold over all of them.
async fn score_population(core: &Core, now: DateTime<Utc>) -> Result<Scoring> {
    let mut purchasers: Vec<Purchaser> = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut tx = core.store.read().await?;
        let page = tx.purchasers_after(&cursor, PAGE).await?;
        tx.commit().await?;
        let Some(last) = page.last() else { break };
        cursor = last.0.clone();
        purchasers.extend(
            page.iter()
                .filter_map(|(id, p)| Purchaser::of(id, &Profile::from_json(&p.0).purchase)),
        );
    }
    // Pages come in id order, so the scores can be found by binary search.
    Ok(Scoring::new(purchasers, core, now))
}

/// A recompute's first step: the population scored from the stored orders rather than the
/// stored profiles (those are what it rebuilds), each contact's orders folded as its profile
/// rebuild folds them. The recompute then writes each profile with its scores, once, instead
/// of a refresh rewriting every purchaser's profile after it.
async fn score_orders(core: &Core) -> Result<Scoring> {
    let now = core.clock.now();
    let rules = &core.profile_rules;
    let mut purchasers = Vec::new();
    let mut cursor = String::new();
    loop {
        let (orders, end) = on_reader!(core, |tx| async {
            let end = tx.page_end(&cursor, PAGE as usize).await?;
            let orders = tx
                .events_named_in(&rules.order_event, (&cursor, end.as_deref()))
                .await?;
            Ok::<_, StoreError>((orders, end))
        }
        .await)
        .await?;
        // By contact, then by time.
        for rows in orders.chunk_by(|a, b| a.0 == b.0) {
            let mut profile = Profile::default();
            for (_, occurred_at, properties) in rows {
                profile.observe(
                    &Observed {
                        name: &rules.order_event,
                        properties: &properties.0,
                        occurred_at: *occurred_at,
                    },
                    rules,
                );
            }
            purchasers.extend(Purchaser::of(&rows[0].0, &profile.purchase));
        }
        match end {
            Some(end) => cursor = end,
            None => return Ok(Scoring::new(purchasers, core, now)),
        }
    }
}

/// What a population refresh computed: every purchaser (in id order) with its scores, and the
/// high-value threshold.
struct Scoring {
    purchasers: Vec<Purchaser>,
    scores: Vec<Rfm>,
    threshold: Option<f64>,
    /// When the purchasers were read.
    at: DateTime<Utc>,
}

impl Scoring {
    /// Scores `purchasers`, in id order, as read at `at`.
    fn new(purchasers: Vec<Purchaser>, core: &Core, at: DateTime<Utc>) -> Scoring {
        let scores = rfm_scores(&purchasers);
        let mut totals: Vec<f64> = purchasers.iter().map(|p| p.total).collect();
        let rules = &core.profile_rules;
        let threshold = rules
            .high_value_total
            .or_else(|| high_value_threshold(&mut totals, rules.high_value_share));
        Scoring {
            purchasers,
            scores,
            threshold,
            at,
        }
    }

    /// The contact's scores; `None` for who had not ordered when they were computed.
    fn of(&self, id: &str) -> Option<&Rfm> {
        let i = self
            .purchasers
            .binary_search_by(|p| p.contact_id.as_str().cmp(id))
            .ok()?;
        Some(&self.scores[i])
    }
}

/// Stores what later evaluations read of a scoring: the high-value threshold in force, and
/// when the population was last scored (the next refresh looks at mail sent since).
async fn record_scoring(tx: &mut Tx, scoring: &Scoring) -> Result<()> {
    if let Some(t) = scoring.threshold {
        tx.set_meta(THRESHOLD_KEY, &t.to_string()).await?;
    }
    tx.set_meta(REFRESHED_KEY, &scoring.at.to_rfc3339()).await
}

/// `stored` with `scoring` applied, and its order count, if that changes it. `None` also for
/// a contact who first ordered after the scores were computed: the next refresh scores it.
fn rescore(scoring: &Scoring, id: &str, stored: &Value) -> Option<(Value, i64)> {
    let rfm = scoring.of(id)?;
    let mut profile = Profile::from_json(stored);
    profile.rfm = Some(rfm.clone());
    profile.purchase.tier = super::profile::purchase_tier(&profile.purchase, scoring.threshold);
    let new = profile.to_json();
    (new != *stored).then_some((new, profile.purchase.orders))
}

/// PostgreSQL: the scored purchasers in pages of `BATCH` by id, each read locked, rescored and
/// written back in a transaction of its own, two pages side by side (a page is mostly server
/// time, as a recompute batch is). Returns how many profiles changed.
async fn rescore_locked(core: &Core, scoring: &Arc<Scoring>, now: DateTime<Utc>) -> Result<usize> {
    // Each page ends at a scored purchaser; who first ordered since is not scored yet.
    let ends: Vec<String> = scoring
        .purchasers
        .chunks(BATCH)
        .filter_map(|page| page.last().map(|p| p.contact_id.clone()))
        .collect();
    let mut rescored = 0;
    let mut from = String::new();
    for pair in ends.chunks(2) {
        let second = async {
            match pair {
                [middle, to] => rescore_page(core, scoring, middle, to, now).await,
                _ => Ok(0),
            }
        };
        let (first, second) =
            tokio::join!(rescore_page(core, scoring, &from, &pair[0], now), second);
        rescored += first? + second?;
        from.clone_from(&pair[pair.len() - 1]);
    }
    Ok(rescored)
}

/// Rescores the purchasers with ids after `from` and up to `to` in one write transaction.
async fn rescore_page(
    core: &Core,
    scoring: &Arc<Scoring>,
    from: &str,
    to: &str,
    now: DateTime<Utc>,
) -> Result<usize> {
    let scoring = Arc::clone(scoring);
    let (from, to) = (from.to_owned(), to.to_owned());
    core.group
        .run(core, &core.store, move |_, tx| {
            let scoring = Arc::clone(&scoring);
            let (from, to) = (from.clone(), to.clone());
            Box::pin(async move {
                tx.plan_for_batches().await?;
                let page = tx.lock_purchasers_in(&from, &to).await?;
                let changed: Vec<(&str, Value, i64)> = page
                    .iter()
                    .filter_map(|(id, old)| {
                        rescore(&scoring, id, &old.0).map(|(new, n)| (id.as_str(), new, n))
                    })
                    .collect();
                let rows: Vec<(&str, &Value, i64)> =
                    changed.iter().map(|(id, p, n)| (*id, p, *n)).collect();
                // Due, so the sweep re-evaluates their segments.
                let due: Vec<(&str, Option<DateTime<Utc>>)> =
                    rows.iter().map(|(id, ..)| (*id, Some(now))).collect();
                let mut writes = tx.profile_writes(&rows);
                writes.extend(tx.due_writes(&due));
                tx.run_all(writes).await?;
                Ok(rows.len())
            })
        })
        .await
}

/// SQLite: each page of purchasers is read and rescored on a reader connection while the
/// writer stores the page before (as the recompute does, see [`Ahead`]). Returns how many
/// profiles changed.
async fn rescore_read_ahead(
    core: &Core,
    scoring: &Arc<Scoring>,
    now: DateTime<Utc>,
) -> Result<usize> {
    let mut page = Rescored::read(core, scoring, "").await?;
    let (mut changed, mut again) = (0, 0);
    while let Some(last) = page.last.clone() {
        let page_now = Arc::new(page);
        let scoring_now = Arc::clone(scoring);
        let write = core.group.run(core, &core.store, move |_, tx| {
            let page = Arc::clone(&page_now);
            let scoring = Arc::clone(&scoring_now);
            Box::pin(async move { page.write(tx, &scoring, now).await })
        });
        let (written, next) = tokio::join!(write, Rescored::read(core, scoring, &last));
        let (written, moved) = written?;
        changed += written;
        again += moved;
        page = next?;
    }
    tracing::debug!(
        again,
        "profiles changed while read ahead, rescored as stored"
    );
    Ok(changed)
}

/// A page of purchasers rescored on a reader, ahead of its write transaction.
struct Rescored {
    /// The page's last contact; `None` when no purchaser came after the cursor.
    last: Option<String>,
    /// Each profile that the scores change: `(id, stored text, new profile, orders)`.
    changed: Vec<(String, String, Value, i64)>,
}

impl Rescored {
    async fn read(core: &Core, scoring: &Scoring, cursor: &str) -> Result<Rescored> {
        let page = on_reader!(core, |tx| tx
            .purchaser_texts_after(cursor, BATCH as i64)
            .await)
        .await?;
        let last = page.last().map(|(id, _)| id.clone());
        let changed = page
            .into_iter()
            .filter_map(|(id, text)| {
                // Herald writes every profile as JSON; text that is not is left alone.
                let stored: Value = serde_json::from_str(&text).ok()?;
                let (new, orders) = rescore(scoring, &id, &stored)?;
                Some((id, text, new, orders))
            })
            .collect();
        Ok(Rescored { last, changed })
    }

    /// Writes each new profile where the stored one is still the one read; a contact whose
    /// profile changed since (a new order, say) is rescored as stored now. Returns how many
    /// profiles changed, and how many of them were rescored here.
    async fn write(
        &self,
        tx: &mut Tx,
        scoring: &Scoring,
        now: DateTime<Utc>,
    ) -> Result<(usize, usize)> {
        let rows: Vec<(&str, &str, &Value, i64)> = self
            .changed
            .iter()
            .map(|(id, text, new, orders)| (id.as_str(), text.as_str(), new, *orders))
            .collect();
        let written: BTreeSet<String> = tx
            .store_profiles_where_unchanged(&rows)
            .await?
            .into_iter()
            .collect();
        let moved: Vec<&str> = rows
            .iter()
            .map(|(id, ..)| *id)
            .filter(|id| !written.contains(*id))
            .collect();
        let again: Vec<(String, Value, i64)> = tx
            .contacts_by_ids(&moved)
            .await?
            .into_iter()
            .filter_map(|c| rescore(scoring, &c.id, &c.profile.0).map(|(p, n)| (c.id, p, n)))
            .collect();
        let again_rows: Vec<(&str, &Value, i64)> = again
            .iter()
            .map(|(id, p, n)| (id.as_str(), p, *n))
            .collect();
        tx.store_profiles(&again_rows).await?;
        let due: Vec<(&str, Option<DateTime<Utc>>)> = written
            .iter()
            .map(|id| (id.as_str(), Some(now)))
            .chain(again_rows.iter().map(|(id, ..)| (*id, Some(now))))
            .collect();
        tx.set_segment_dues(&due).await?;
        Ok((due.len(), moved.len()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::app::{Application, Role};
    use crate::clock::{Clock, ManualClock};
    use crate::config::Settings;
    use crate::ingest::{ContactInput, EventInput};
    use crate::store::job_status;

    /// An event no segment reads re-evaluates its contact only when it moves the engagement
    /// tier, the purchases or the lifecycle stage.
    #[test]
    fn folding_an_event_no_segment_reads_says_whether_to_re_evaluate() {
        let settings = Settings::load_with_env(std::path::Path::new("/nonexistent"), None, &[])
            .expect("settings");
        let rules = ProfileRules::from_settings(&settings.profile).expect("rules");
        let now = Utc
            .with_ymd_and_hms(2026, 3, 1, 9, 0, 0)
            .single()
            .expect("time");
        let event = |name: &str, properties: Value, days_ago: i64| Event {
            id: format!("{name}-{days_ago}"),
            contact_id: "c-1".to_owned(),
            name: name.to_owned(),
            properties: Json(properties),
            occurred_at: now - TimeDelta::days(days_ago),
            received_at: now,
        };
        let contact_after = |history: &[Event]| {
            let mut profile = Profile::default();
            observe_all(&mut profile, &history.iter().collect::<Vec<_>>(), &rules);
            let created_at = now - TimeDelta::days(400);
            profile.settle(created_at, 0, None, now, &rules);
            Contact {
                id: "c-1".to_owned(),
                email: "c-1@example.com".to_owned(),
                attributes: Json(json!({})),
                subscribed: true,
                created_at,
                updated_at: created_at,
                profile: Json(profile.to_json()),
            }
        };
        let view = event("page_viewed", json!({}), 10);
        let open = event("email_opened", json!({}), 1);
        let active_viewer = contact_after(&[view.clone(), open]);

        let again = [&event("page_viewed", json!({}), 0)];
        assert_eq!(
            fold_with(&rules, true, &active_viewer, &again, now),
            Fold::Unchanged
        );
        let machine = [&event("email_opened", json!({ "machine": true }), 0)];
        assert_eq!(
            fold_with(&rules, true, &active_viewer, &machine, now),
            Fold::Unchanged
        );
        let older = [&event("email_opened", json!({}), 5)];
        assert_eq!(
            fold_with(&rules, true, &active_viewer, &older, now),
            Fold::Unchanged
        );
        // A first click moves the lifecycle stage on (to consideration).
        let click = [&event("email_clicked", json!({}), 0)];
        assert_eq!(
            fold_with(&rules, true, &active_viewer, &click, now),
            Fold::Changed
        );
        let open_now = [&event("email_opened", json!({}), 0)];
        match fold_with(&rules, true, &active_viewer, &open_now, now) {
            Fold::Quiet(profile) => assert_eq!(profile.last_engaged_at, Some(now)),
            other => panic!("an active reader opening again is quiet, got {other:?}"),
        }
        // Unless a segment reads `last_engaged_at` itself.
        assert_eq!(
            fold_with(&rules, false, &active_viewer, &open_now, now),
            Fold::Changed
        );
        let order = [&event("order_placed", json!({ "total": 20 }), 0)];
        assert_eq!(
            fold_with(&rules, true, &active_viewer, &order, now),
            Fold::Changed
        );

        let lapsed = contact_after(&[view, event("email_opened", json!({}), 200)]);
        assert_eq!(
            fold_with(&rules, true, &lapsed, &open_now, now),
            Fold::Changed
        );
        let stranger = contact_after(&[]);
        assert_eq!(
            fold_with(&rules, true, &stranger, &again, now),
            Fold::Changed
        );
    }

    /// A worker on a new SQLite database in `dir`, with `segment` (YAML) if given, on a manual
    /// clock at 2026-03-01 09:00, its first recompute done.
    async fn worker(dir: &std::path::Path, segment: Option<&str>) -> (Arc<Core>, ManualClock) {
        std::fs::create_dir_all(dir.join("segments")).expect("segments dir");
        if let Some(yaml) = segment {
            std::fs::write(dir.join("segments/s.yaml"), yaml).expect("segment");
        }
        let url = format!("sqlite://{}", dir.join("herald.db").display());
        let env = vec![("HERALD_DATABASE__URL".to_owned(), url)];
        let settings = Settings::load_with_env(dir, None, &env).expect("settings");
        let start = Utc
            .with_ymd_and_hms(2026, 3, 1, 9, 0, 0)
            .single()
            .expect("time");
        let clock = ManualClock::new(start);
        let app = Application::build(settings, dir, Clock::Manual(clock.clone()), Role::Worker)
            .await
            .expect("app");
        crate::scheduler::run_due(&app.core)
            .await
            .expect("first recompute");
        (app.core, clock)
    }

    /// Posts an `order_placed` of `total` for `contact` (created if new).
    async fn order(core: &Core, contact: &str, total: f64) {
        let event = EventInput {
            id: None,
            contact_id: contact.to_owned(),
            name: "order_placed".to_owned(),
            properties: json!({ "total": total }).as_object().cloned(),
            timestamp: None,
        };
        core.ingest_events(vec![event]).await.expect("order");
    }

    /// A contact's stored profile.
    async fn profile(core: &Core, id: &str) -> Profile {
        let mut tx = core.store.read().await.expect("read");
        let contact = tx.get_contact(id).await.expect("contact").expect("exists");
        tx.commit().await.expect("commit");
        Profile::from_json(&contact.profile.0)
    }

    /// A refresh page rescored on a reader ahead of its write must not overwrite a profile
    /// that changed in between: here `c-1` places a second order after the read, and its
    /// written profile must hold that order and the scores. `c-2`, unchanged, is written as
    /// rescored on the reader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_page_read_ahead_rescores_profiles_changed_since() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (core, clock) = worker(dir.path(), None).await;
        for (id, total) in [("c-1", 10.0), ("c-2", 100.0)] {
            let contact = ContactInput {
                id: id.to_owned(),
                email: Some(format!("{id}@example.com")),
                attributes: None,
                subscribed: None,
            };
            core.upsert_contacts(vec![contact]).await.expect("contact");
            order(&core, id, total).await;
        }
        let scoring = score_population(&core, clock.now()).await.expect("scores");
        assert_eq!(scoring.purchasers.len(), 2);
        let page = Rescored::read(&core, &scoring, "")
            .await
            .expect("read ahead");
        assert_eq!(page.changed.len(), 2, "both gain scores");
        order(&core, "c-1", 5.0).await;
        assert!(profile(&core, "c-1").await.rfm.is_none());
        let due = core.store.due_segment_contacts(clock.now(), 10).await;
        assert!(due.expect("due").is_empty());

        let mut tx = core.store.write().await.expect("write");
        let (changed, again) = page
            .write(&mut tx, &scoring, clock.now())
            .await
            .expect("write page");
        tx.commit().await.expect("commit");
        assert_eq!((changed, again), (2, 1), "c-1 rescored in the write");
        let first = profile(&core, "c-1").await;
        assert_eq!(first.purchase.orders, 2, "the second order is kept");
        assert_eq!(first.purchase.total, 15.0);
        assert!(first.rfm.is_some());
        let second = profile(&core, "c-2").await;
        assert_eq!(second.purchase.orders, 1);
        assert_eq!(second.rfm, Some(scoring.scores[1].clone()));
        let due = core
            .store
            .due_segment_contacts(clock.now(), 10)
            .await
            .expect("due");
        assert_eq!(due, ["c-1", "c-2"], "both due for their segments");
        core.shutdown().await;
    }

    /// How many segments `c-1` is in, and its membership events named `name`.
    async fn members_and_events(core: &Core, name: &str) -> (usize, Vec<Event>) {
        let mut tx = core.store.read().await.expect("read");
        let members = tx.memberships(&["c-1".to_owned()]).await.expect("members");
        let events = tx.contact_events("c-1", name, None).await.expect("events");
        tx.commit().await.expect("commit");
        (members.len(), events)
    }

    /// A recompute batch read ahead of its write transaction must not store what it read when
    /// an event changed the contact in between. Here the snapshot holds an imported view (stored
    /// without effects, as an import stores it), so the batch decides that the contact enters;
    /// then a live event makes it enter first. The write must not record a second entry, and
    /// the window must still run out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_read_ahead_is_decided_again_for_contacts_changed_since() {
        let dir = tempfile::tempdir().expect("temp dir");
        let segment = "name: browsers\nmatch:\n  - event: page_viewed\n    within: 30d\n";
        let (core, clock) = worker(dir.path(), Some(segment)).await;
        let start = clock.now();
        let contact = ContactInput {
            id: "c-1".to_owned(),
            email: Some("ana@example.com".to_owned()),
            attributes: None,
            subscribed: None,
        };
        core.upsert_contacts(vec![contact]).await.expect("contact");
        let imported = Event {
            id: "imported-1".to_owned(),
            contact_id: "c-1".to_owned(),
            name: "page_viewed".to_owned(),
            properties: Json(json!({})),
            occurred_at: start - TimeDelta::days(1),
            received_at: start - TimeDelta::days(1),
        };
        let mut tx = core.store.write().await.expect("write");
        tx.import_events(&[imported]).await.expect("import");
        tx.commit().await.expect("commit");

        let scoring = Some(Arc::new(score_orders(&core).await.expect("scores")));
        let ahead = Ahead::read(&core, &scoring, "").await.expect("read ahead");
        let view = EventInput {
            id: None,
            contact_id: "c-1".to_owned(),
            name: "page_viewed".to_owned(),
            properties: None,
            timestamp: None,
        };
        core.ingest_events(vec![view]).await.expect("event");
        let mut job = job(RECOMPUTE_JOB, start, 3);
        job.status = job_status::RUNNING.to_owned();
        job.locked_by = Some(core.worker_id.clone());
        job.locked_until = Some(start + TimeDelta::minutes(5));
        let mut tx = core.store.write().await.expect("write");
        tx.insert_job(&job).await.expect("job");
        tx.commit().await.expect("commit");
        let mut payload = job.payload.0.clone();
        let outcome = ahead.write(&core, &job, &mut payload).await.expect("write");
        assert!(matches!(outcome, Some(Outcome::Done)));

        let (members, entries) = members_and_events(&core, ENTERED).await;
        assert_eq!(members, 1);
        assert_eq!(entries.len(), 1, "one entry, by the live event");

        clock.advance(TimeDelta::days(31));
        sweep(&core).await.expect("sweep");
        let (members, exits) = members_and_events(&core, EXITED).await;
        assert_eq!(members, 0);
        assert_eq!(exits.len(), 1);
        core.shutdown().await;
    }
}
