//! Plain-data model of a workflow file (`workflows/<name>.yaml`), as described in FORMATS.md.
//! Parsing and validation live in `parse`; execution lives in `engine`.

use std::path::PathBuf;

use chrono::{NaiveTime, TimeDelta, Weekday};
use serde_json::Value;

/// A span of time written as `30s`, `15m`, `1h`, `2d` or `1w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub TimeDelta);

/// A workflow definition loaded from one YAML file.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// Unique name; defaults to the file stem.
    pub name: String,
    pub description: Option<String>,
    pub category: Category,
    pub trigger: Trigger,
    /// Entry conditions (all must hold).
    pub conditions: Vec<Condition>,
    pub reentry: Reentry,
    pub exit_on: Vec<EventMatch>,
    pub goal: Option<Goal>,
    /// Overrides of the `[sending]` etiquette for this workflow's marketing mail.
    pub policy: PolicyOverrides,
    /// Own open/click tracking for this workflow's marketing mail (`None`: `[tracking] enabled`).
    pub tracking: Option<bool>,
    /// Transport for this workflow's sends (a step's own `transport` wins).
    pub transport: Option<String>,
    pub steps: Vec<Step>,
    /// File the workflow was loaded from, for error messages.
    pub source: PathBuf,
}

/// A segment definition (`segments/<name>.yaml`).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDef {
    /// Unique name; defaults to the file stem.
    pub name: String,
    pub description: Option<String>,
    /// `match`: the condition a member satisfies.
    pub matcher: Condition,
    /// Other segments `match` refers to, with where.
    pub references: Vec<SegmentRef>,
    pub source: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRef {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

/// A workflow's choice for one `[sending]` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Override<T> {
    /// Use the configured default.
    #[default]
    Inherit,
    /// Turned off for this workflow (`quiet_hours: off`).
    Off,
    On(T),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyOverrides {
    pub quiet_hours: Override<QuietHours>,
    pub frequency_cap: Override<FrequencyCap>,
}

/// Contact-local window in which marketing mail waits; may span midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

/// At most `max` marketing emails per contact in any `per` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub max: u32,
    pub per: Duration,
    pub outcome: CapOutcome,
}

/// What happens to a send over the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CapOutcome {
    /// Never sent (Klaviyo's "smart sending").
    #[default]
    Skip,
    /// Held until the cap allows it.
    Defer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Category {
    #[default]
    Marketing,
    Transactional,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Event(EventTrigger),
    Segment(SegmentTrigger),
    Date(DateTrigger),
    Schedule(ScheduleTrigger),
}

/// `trigger: { event, where, key }`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTrigger {
    pub event: String,
    /// Conditions on the triggering event (`property`) or the contact.
    pub filter: Vec<Condition>,
    /// Event property whose value scopes "one active journey per contact".
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SegmentTrigger {
    Entered(String),
    Exited(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DateTrigger {
    pub attribute: String,
    pub offset: Option<SignedDuration>,
    pub at: Option<NaiveTime>,
}

/// A duration that may be negative (`offset: -3d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedDuration(pub TimeDelta);

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleTrigger {
    pub cron: String,
    pub timezone: ScheduleZone,
    pub audience: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleZone {
    /// Each contact's own time zone.
    Contact,
    /// The configured `sending.timezone`.
    Default,
    /// A fixed IANA zone.
    Zone(chrono_tz::Tz),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reentry {
    #[default]
    Never,
    Always,
    /// Allowed again once this long has passed since the last entry.
    After(Duration),
}

/// An event name plus optional filter on its properties (used by `exit_on`).
#[derive(Debug, Clone, PartialEq)]
pub struct EventMatch {
    pub event: String,
    pub filter: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub event: String,
    pub within: Option<Duration>,
    /// Numeric event property summed as revenue.
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Optional stable id, referenced by `opened`/`clicked` and reports.
    pub id: Option<String>,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Wait(Wait),
    WaitFor {
        event: String,
        timeout: Duration,
    },
    Send(SendSpec),
    Branch {
        condition: Condition,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    Split(Vec<Variant>),
    Update {
        attribute: String,
        value: Value,
    },
    /// Suppresses the contact's address (`suppress: sunset`), e.g. after a failed
    /// re-engagement attempt; `DELETE /v1/suppressions/{email}` lifts it.
    Suppress {
        reason: String,
    },
    Exit,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    For(Duration),
    /// Next local time `until` on one of `days` (all days when empty).
    Until {
        until: NaiveTime,
        days: Vec<Weekday>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendSpec {
    pub template: String,
    pub transport: Option<String>,
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub weight: u32,
    pub steps: Vec<Step>,
}

/// Comparison operators of FORMATS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Exists,
    Contains,
}

/// One operator with its operand, e.g. `gt: 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub op: Op,
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFn {
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A property of the triggering (or filtered) event; dotted path.
    Property {
        path: String,
        tests: Vec<Comparison>,
    },
    /// A contact attribute; dotted path.
    Attribute {
        path: String,
        tests: Vec<Comparison>,
    },
    /// The contact's events of one name.
    Event(EventCondition),
    Segment(String),
    Opened(String),
    Clicked(String),
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventCondition {
    pub name: String,
    /// Only events in the last `within` (default: ever).
    pub within: Option<Duration>,
    /// Filter on those events' properties (`property` conditions).
    pub filter: Vec<Condition>,
    pub measure: EventMeasure,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventMeasure {
    /// `count: { gte: 2 }`; default `{ gte: 1 }`.
    Count(Vec<Comparison>),
    /// `sum: total` with `gte: 500` beside it.
    Aggregate {
        function: AggregateFn,
        property: String,
        tests: Vec<Comparison>,
    },
}

impl Duration {
    /// Parses a duration setting, naming the key in the error.
    pub fn parse_setting(key: &str, value: &str) -> Result<Duration, String> {
        value.parse::<Duration>().map_err(|e| format!("{key}: {e}"))
    }
}
