//! Reading `workflows/*.yaml` into the plain-data model of [`super::model`], with validation.
//!
//! The YAML is first read into a generic tree whose every node carries its source location
//! (serde-saphyr's [`Spanned`]), then converted by hand. Converting by hand rather than
//! deriving `Deserialize` for the model lets one pass report *every* problem of a file at its
//! line and column (serde stops at the first), and gives messages in Herald's words for the
//! shapes serde derives handle badly: flat condition mappings (`property` beside `gt`), steps
//! with an optional `id` beside exactly one kind, and cross references (`clicked: reminder`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{NaiveTime, TimeDelta, Weekday};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{
    DefaultMessageFormatter, DuplicateKeyPolicy, Location, MessageFormatter, NonFiniteFloatPolicy,
    Spanned,
};

use super::model::{
    AggregateFn, CapOutcome, Category, Comparison, Condition, DateTrigger, Duration,
    EventCondition, EventMatch, EventMeasure, EventTrigger, FrequencyCap, Goal, Op, Override,
    PolicyOverrides, QuietHours, Reentry, ScheduleTrigger, ScheduleZone, SegmentDef, SegmentRef,
    SegmentTrigger, SendSpec, SignedDuration, Step, StepKind, Trigger, Variant, Wait, Workflow,
};
use crate::diagnostic::Diagnostic;

/// What a workflow may reference outside itself: templates and transports by name.
pub struct Known<'a> {
    pub template: &'a dyn Fn(&str) -> bool,
    pub transport: &'a dyn Fn(&str) -> bool,
    pub segment: &'a dyn Fn(&str) -> bool,
}

impl<'a> Known<'a> {
    /// Checks templates only; any transport name is accepted.
    pub fn templates(template: &'a dyn Fn(&str) -> bool) -> Known<'a> {
        Known {
            template,
            transport: &|_| true,
            segment: &|_| true,
        }
    }
}

/// Parses one workflow file. `path` is used for the workflow's `source`, its default name (the
/// file stem) and the diagnostics; `known` answers whether a `send` step's template and
/// transport exist. On failure returns every problem found, in source order.
pub fn parse_workflow(
    path: &Path,
    source: &str,
    known: &Known<'_>,
) -> Result<Workflow, Vec<Diagnostic>> {
    parse(path, source, known).map(|(workflow, _)| workflow)
}

/// Loads every `*.yaml` and `*.yml` file directly in `dir`, in file-name order. A missing
/// directory holds no workflows. Besides each file's own problems, reports workflow names used
/// by more than one file, once in each file; only the first file's workflow is returned then.
pub fn load_dir(dir: &Path, known: &Known<'_>) -> (Vec<Workflow>, Vec<Diagnostic>) {
    load_files(dir, "workflow", |path, source| parse(path, source, known))
}

/// Something loaded from one file of a project directory, unique by name.
trait Named {
    fn name(&self) -> &str;
}

impl Named for Workflow {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for SegmentDef {
    fn name(&self) -> &str {
        &self.name
    }
}

/// Loads every `*.yaml`/`*.yml` file of `dir` with `parse`, reporting names used twice.
fn load_files<T: Named>(
    dir: &Path,
    what: &str,
    parse: impl Fn(&Path, &str) -> Result<(T, Option<Location>), Vec<Diagnostic>>,
) -> (Vec<T>, Vec<Diagnostic>) {
    let mut workflows = Vec::new();
    let mut diagnostics = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (workflows, diagnostics),
        Err(e) => {
            diagnostics.push(Diagnostic::new(
                dir,
                0,
                0,
                format!("cannot read directory: {e}"),
            ));
            return (workflows, diagnostics);
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => diagnostics.push(Diagnostic::new(
                dir,
                0,
                0,
                format!("cannot read directory: {e}"),
            )),
        }
    }
    paths.retain(|p| {
        let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        yaml && p.is_file()
    });
    paths.sort();

    /// Where a workflow name was first used: the file, its text and the `name` value's place.
    struct FirstUse {
        path: PathBuf,
        source: String,
        at: Option<(usize, usize)>,
    }
    let mut names: HashMap<String, FirstUse> = HashMap::new();
    for path in paths {
        let source = match std::fs::read_to_string(&path) {
            Ok(source) => source,
            Err(e) => {
                diagnostics.push(Diagnostic::new(
                    &path,
                    0,
                    0,
                    format!("cannot read file: {e}"),
                ));
                continue;
            }
        };
        match parse(&path, &source) {
            Ok((workflow, name_at)) => {
                let at = name_at.map(line_column);
                if let Some(first) = names.get(workflow.name()) {
                    // Both files are in `dir`, so the file name says which one.
                    let message = |other: &Path| {
                        let other = other.file_name().unwrap_or_default().to_string_lossy();
                        format!(
                            "duplicate {what} name `{}`: also used by {other}",
                            workflow.name()
                        )
                    };
                    let (line, column) = first.at.unwrap_or((0, 0));
                    diagnostics.push(
                        Diagnostic::new(&first.path, line, column, message(&path))
                            .with_source(&first.source),
                    );
                    let (line, column) = at.unwrap_or((0, 0));
                    diagnostics.push(
                        Diagnostic::new(&path, line, column, message(&first.path))
                            .with_source(&source),
                    );
                } else {
                    names.insert(workflow.name().to_owned(), FirstUse { path, source, at });
                    workflows.push(workflow);
                }
            }
            Err(problems) => diagnostics.extend(problems),
        }
    }
    (workflows, diagnostics)
}

/// The accepted spellings, for error messages.
const DURATION_FORMS: &str = "a whole number and a unit (s, m, h, d or w) with no space \
                              between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w`";

/// Parses `30s`, `15m`, `1h`, `2d` or `1w`: a whole number and one unit.
impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let invalid = || format!("invalid duration `{s}`: expected {DURATION_FORMS}");
        let unit_at = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
        let (digits, unit) = s.split_at(unit_at);
        let seconds_per_unit: i64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(invalid()),
        };
        if digits.is_empty() {
            return Err(invalid());
        }
        let too_long = || format!("duration `{s}` is too long");
        let amount: i64 = digits.parse().map_err(|_| too_long())?;
        amount
            .checked_mul(seconds_per_unit)
            .and_then(TimeDelta::try_seconds)
            .map(Duration)
            .ok_or_else(too_long)
    }
}

/// Parses a [`Duration`] with an optional sign: `-3d`, `+1d`, `2h`.
impl FromStr for SignedDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (negative, rest) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => (false, s),
        };
        let Duration(delta) = rest.parse().map_err(|_| {
            format!("invalid offset `{s}`: expected an optional sign and {DURATION_FORMS} (`-3d` is three days before)")
        })?;
        Ok(SignedDuration(if negative { -delta } else { delta }))
    }
}

/// Parses a time of day written `HH:MM`, 24-hour (`09:00`, `17:30`; `9:00` is accepted too).
/// `skip` or `defer`.
pub fn parse_cap_outcome(s: &str) -> Result<CapOutcome, String> {
    match s {
        "skip" => Ok(CapOutcome::Skip),
        "defer" => Ok(CapOutcome::Defer),
        _ => Err(format!(
            "unknown frequency cap outcome `{s}`, expected `skip` or `defer`"
        )),
    }
}

pub fn parse_time_of_day(s: &str) -> Result<NaiveTime, String> {
    let invalid =
        || format!("invalid time `{s}`: expected HH:MM, 24-hour, e.g. `09:00` or `17:30`");
    let (hours, minutes) = s.split_once(':').ok_or_else(invalid)?;
    let digits = |t: &str, max_len: usize| {
        (1..=max_len).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(hours, 2) || minutes.len() != 2 || !digits(minutes, 2) {
        return Err(invalid());
    }
    let hours = hours.parse().map_err(|_| invalid())?;
    let minutes = minutes.parse().map_err(|_| invalid())?;
    NaiveTime::from_hms_opt(hours, minutes, 0).ok_or_else(invalid)
}

/// Parses, converts and validates one workflow file; on success also returns where `name` was
/// written.
fn parse(
    path: &Path,
    source: &str,
    known: &Known<'_>,
) -> Result<(Workflow, Option<Location>), Vec<Diagnostic>> {
    parse_with(path, source, known, "invalid workflow", |r, root| {
        r.workflow(root)
    })
}

/// Reads one file's YAML and converts it with `read`, collecting every diagnostic.
fn parse_with<T>(
    path: &Path,
    source: &str,
    known: &Known<'_>,
    invalid: &str,
    read: impl FnOnce(&mut Reader<'_>, &SNode) -> Option<T>,
) -> Result<T, Vec<Diagnostic>> {
    let root = read_yaml(source).map_err(|(at, message)| {
        let (line, column) = at.map(line_column).unwrap_or((0, 0));
        vec![Diagnostic::new(path, line, column, message).with_source(source)]
    })?;
    let mut reader = Reader {
        file: path,
        source,
        known,
        diagnostics: Vec::new(),
        step_ids: HashMap::new(),
        earlier_sends: HashSet::new(),
        segment_refs: Vec::new(),
    };
    let value = read(&mut reader, &root);
    let mut diagnostics = reader.diagnostics;
    match value {
        Some(value) if diagnostics.is_empty() => Ok(value),
        _ => {
            if diagnostics.is_empty() {
                // Every failed conversion records why; this only guards the contract that an
                // error comes with at least one diagnostic.
                diagnostics.push(Diagnostic::new(path, 0, 0, invalid));
            }
            diagnostics.sort_by_key(|d| (d.line, d.column));
            Err(diagnostics
                .into_iter()
                .map(|d| d.with_source(source))
                .collect())
        }
    }
}

/// Parses one segment file (FORMATS.md "Segments"); `known.segment` answers whether a
/// referenced segment exists.
pub fn parse_segment(
    path: &Path,
    source: &str,
    known: &Known<'_>,
) -> Result<SegmentDef, Vec<Diagnostic>> {
    parse_with(path, source, known, "invalid segment", |r, root| {
        r.segment(root).map(|(s, _)| s)
    })
}

/// Loads every segment file in `dir` like [`load_dir`] loads workflows.
pub fn load_segments(dir: &Path, known: &Known<'_>) -> (Vec<SegmentDef>, Vec<Diagnostic>) {
    load_files(dir, "segment", |path, source| {
        parse_with(path, source, known, "invalid segment", |r, root| {
            r.segment(root)
        })
    })
}

fn line_column(at: Location) -> (usize, usize) {
    let convert = |n: u64| usize::try_from(n).unwrap_or(0);
    (convert(at.line()), convert(at.column()))
}

/// A YAML node as written, before it is given a meaning.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<SNode>),
    Map(Vec<(SNode, SNode)>),
}

/// A node with its location: `referenced` is where it is used (where errors point), `defined`
/// where its text is (they differ for aliases).
type SNode = Spanned<Node>;

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key()? {
            pairs.push((key, map.next_value()?));
        }
        Ok(Node::Map(pairs))
    }
}

/// How deeply mappings and lists may nest in a workflow file.
const MAX_DEPTH: usize = 32;

/// Reads the YAML tree, or returns the syntax error with its place.
fn read_yaml(source: &str) -> Result<SNode, (Option<Location>, String)> {
    let mut options = serde_saphyr::Options::default();
    // YAML 1.1 booleans would turn `country: NO` or a template named `y` into booleans.
    options.strict_booleans = true;
    // Keep `.inf`/`.nan` as text instead of failing the file; no field wants them as numbers.
    options.non_finite_float_policy = NonFiniteFloatPolicy::AsString;
    // `value: 02134` (a zip code) stays as written.
    options.leading_zero_numbers_as_strings = true;
    // Duplicates reach our visitor so that every one is reported, not just the first.
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    // We render our own snippet; the message must come without one.
    options.with_snippet = false;
    // Reading costs about 40 KB of stack per nesting level in debug builds, so the default
    // limit (64) could overflow a 2 MB thread before tripping. Real workflows nest about 15
    // levels deep (three branches inside each other, a condition list in the innermost).
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options(source, options).map_err(|e| {
        if let serde_saphyr::Error::Budget {
            breach: BudgetBreach::Depth { .. },
            ..
        } = e.without_snippet()
        {
            let message =
                format!("lists and mappings are nested more than {MAX_DEPTH} levels deep");
            return (e.location(), message);
        }
        // The formatter's text is raw (see its docs): keep control characters out of terminals.
        let mut message = String::from("invalid YAML: ");
        for c in DefaultMessageFormatter.format_message(&e).chars() {
            if c.is_control() {
                message.extend(c.escape_debug());
            } else {
                message.push(c);
            }
        }
        (e.location(), message)
    })
}

const WORKFLOW_KEYS: &[&str] = &[
    "name",
    "description",
    "category",
    "trigger",
    "conditions",
    "reentry",
    "exit_on",
    "goal",
    "quiet_hours",
    "frequency_cap",
    "tracking",
    "transport",
    "steps",
];
const TRIGGER_KINDS: &[&str] = &["event", "segment", "date", "schedule"];
const TRIGGER_KEYS: &[&str] = &["event", "where", "key", "segment", "date", "schedule"];
const STEP_KINDS: &[&str] = &[
    "wait", "wait_for", "send", "branch", "split", "update", "suppress", "exit",
];
const STEP_KEYS: &[&str] = &[
    "id", "wait", "wait_for", "send", "branch", "split", "update", "suppress", "exit",
];
const SUBJECTS: &[&str] = &[
    "property",
    "attribute",
    "event",
    "segment",
    "opened",
    "clicked",
    "all",
    "any",
    "not",
];
const OPERATORS: &[&str] = &[
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "contains",
];
const EVENT_KEYS: &[&str] = &["within", "count", "where", "sum", "avg", "min", "max"];
/// Everything an `event` condition may have beside `event`: [`EVENT_KEYS`] and [`OPERATORS`].
const EVENT_CONDITION_KEYS: &[&str] = &[
    "within", "count", "where", "sum", "avg", "min", "max", "eq", "ne", "gt", "gte", "lt", "lte",
    "in", "not_in", "exists", "contains",
];
const AGGREGATES: &[&str] = &["sum", "avg", "min", "max"];
const COUNT_OPERATORS: &[&str] = &["eq", "ne", "gt", "gte", "lt", "lte"];

/// Where a condition is written, which decides what it may refer to.
#[derive(Clone, Copy)]
enum Scope {
    /// A `branch`'s `if`: inside a journey, so `opened`/`clicked` may name earlier sends.
    Journey,
    /// Before or outside any journey (`conditions`, trigger `where`, `exit_on`); names the place.
    NoJourney(&'static str),
    /// The `where` of an `event` condition: filters on each event's own properties.
    EventFilter,
    /// A segment's `match`: about the contact alone, with no triggering event or journey.
    Segment,
}

/// One key/value pair of a mapping.
struct Entry<'n> {
    name: String,
    key: &'n SNode,
    value: &'n SNode,
}

/// A mapping's entries, free of duplicates (and, from [`Reader::fields`], of unknown keys).
struct Fields<'n> {
    at: Location,
    entries: Vec<Entry<'n>>,
    /// Whether unknown keys were reported, so that a missing kind is not reported twice.
    had_unknown: bool,
}

impl<'n> Fields<'n> {
    fn entry(&self, name: &str) -> Option<&Entry<'n>> {
        self.entries.iter().find(|e| e.name == name)
    }

    fn get(&self, name: &str) -> Option<&'n SNode> {
        self.entry(name).map(|e| e.value)
    }
}

/// Converts the YAML tree of one file, collecting diagnostics as it goes.
struct Reader<'a> {
    file: &'a Path,
    source: &'a str,
    known: &'a Known<'a>,
    diagnostics: Vec<Diagnostic>,
    /// Every step id declared so far, with where.
    step_ids: HashMap<String, Location>,
    /// Ids of `send` steps that run before the step being read, in execution order.
    earlier_sends: HashSet<String>,
    /// Segments referenced so far, with where (for cycle reports).
    segment_refs: Vec<(String, Location)>,
}

impl<'a> Reader<'a> {
    fn error(&mut self, at: Location, message: impl Into<String>) {
        let (line, column) = line_column(at);
        self.diagnostics
            .push(Diagnostic::new(self.file, line, column, message));
    }

    // ---- Generic shapes ----

    /// The text of a scalar as written: numbers and booleans keep their spelling
    /// (`id: 1.10` is the id "1.10"). `None` for lists and mappings.
    fn scalar_text(&self, node: &SNode) -> Option<String> {
        let written = || {
            let span = node.defined.span();
            let start = usize::try_from(span.byte_offset()?).ok()?;
            let len = usize::try_from(span.byte_len()?).ok()?;
            self.source.get(start..start.checked_add(len)?)
        };
        let fallback = match &node.value {
            Node::Str(s) => return Some(s.clone()),
            Node::Seq(_) | Node::Map(_) => return None,
            Node::Null => String::new(),
            Node::Bool(b) => b.to_string(),
            Node::Int(n) => n.to_string(),
            Node::UInt(n) => n.to_string(),
            Node::Float(x) => x.to_string(),
        };
        Some(written().map_or(fallback, str::to_owned))
    }

    /// Checks that `node` is a mapping with scalar keys, reporting every duplicate key.
    fn entries<'n>(&mut self, node: &'n SNode, what: &str) -> Option<Fields<'n>> {
        let Node::Map(pairs) = &node.value else {
            self.error(
                node.referenced,
                format!("{what} must be a mapping, found {}", describe(&node.value)),
            );
            return None;
        };
        let mut seen: HashMap<String, Location> = HashMap::new();
        let mut entries = Vec::new();
        for (key, value) in pairs {
            let Some(name) = self.scalar_text(key) else {
                self.error(
                    key.referenced,
                    "a key must be a plain name, not a list or mapping",
                );
                continue;
            };
            if let Some(first) = seen.get(&name) {
                let line = first.line();
                self.error(
                    key.referenced,
                    format!("duplicate key `{name}` (first given on line {line})"),
                );
                continue;
            }
            seen.insert(name.clone(), key.referenced);
            entries.push(Entry { name, key, value });
        }
        Some(Fields {
            at: node.referenced,
            entries,
            had_unknown: false,
        })
    }

    /// [`Self::entries`], also reporting (and dropping) keys not in `allowed`.
    fn fields<'n>(&mut self, node: &'n SNode, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let mut fields = self.entries(node, what)?;
        let mut had_unknown = false;
        fields.entries.retain(|e| {
            let known = allowed.contains(&e.name.as_str());
            if !known {
                had_unknown = true;
                self.error(e.key.referenced, unknown_field(&e.name, allowed));
            }
            known
        });
        fields.had_unknown = had_unknown;
        Some(fields)
    }

    /// The value of a required key, or an error at the mapping.
    fn required<'n>(&mut self, fields: &Fields<'n>, name: &str, what: &str) -> Option<&'n SNode> {
        let value = fields.get(name);
        if value.is_none() {
            self.error(fields.at, format!("{what} is missing `{name}`"));
        }
        value
    }

    /// The one entry among `kinds` (trigger kinds, step kinds, …).
    fn one_kind<'f, 'n>(
        &mut self,
        fields: &'f Fields<'n>,
        kinds: &[&str],
        what: &str,
    ) -> Option<&'f Entry<'n>> {
        let found: Vec<&Entry<'n>> = fields
            .entries
            .iter()
            .filter(|e| kinds.contains(&e.name.as_str()))
            .collect();
        match found.as_slice() {
            [one] => Some(one),
            // The unknown key's message already lists the accepted keys.
            [] if fields.had_unknown => None,
            [] => {
                self.error(fields.at, format!("{what} needs one of {}", one_of(kinds)));
                None
            }
            many => {
                let names: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
                self.error(
                    fields.at,
                    format!(
                        "{what} must have exactly one of {}; found {}",
                        one_of(kinds),
                        and_list(&names)
                    ),
                );
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n SNode, what: &str) -> Option<&'n [SNode]> {
        match &node.value {
            Node::Seq(items) => Some(items),
            other => {
                self.error(
                    node.referenced,
                    format!("{what} must be a list, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A string; numbers and booleans are taken as written (`id: 1` is the id "1").
    fn string(&mut self, node: &SNode, what: &str) -> Option<String> {
        match &node.value {
            Node::Null | Node::Seq(_) | Node::Map(_) => {
                self.error(
                    node.referenced,
                    format!("{what} must be a string, found {}", describe(&node.value)),
                );
                None
            }
            _ => self.scalar_text(node),
        }
    }

    /// A non-blank string: a name, an id or a property path.
    fn name(&mut self, node: &SNode, what: &str) -> Option<String> {
        let text = self.string(node, what)?;
        if text.trim().is_empty() {
            self.error(node.referenced, format!("{what} must not be empty"));
            return None;
        }
        Some(text)
    }

    fn parsed<T>(
        &mut self,
        node: &SNode,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(node, what)?;
        match parse(&text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(node.referenced, message);
                None
            }
        }
    }

    fn duration(&mut self, node: &SNode, what: &str) -> Option<Duration> {
        self.parsed(node, what, str::parse)
    }

    /// Any YAML value as JSON (`update` values, comparison operands).
    fn json(&mut self, node: &SNode) -> Option<Value> {
        Some(match &node.value {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(n) => Value::from(*n),
            Node::UInt(n) => Value::from(*n),
            Node::Float(x) => serde_json::Number::from_f64(*x)
                .map_or_else(|| Value::String(x.to_string()), Value::Number),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => {
                Value::Array(items.iter().filter_map(|item| self.json(item)).collect())
            }
            Node::Map(_) => {
                let fields = self.entries(node, "a value")?;
                let mut object = serde_json::Map::new();
                for entry in fields.entries {
                    if let Some(value) = self.json(entry.value) {
                        object.insert(entry.name, value);
                    }
                }
                Value::Object(object)
            }
        })
    }

    /// A segment name that must exist.
    fn segment_ref(&mut self, node: &SNode) -> Option<String> {
        let name = self.name(node, "the segment name")?;
        if !(self.known.segment)(&name) {
            self.error(
                node.referenced,
                format!("unknown segment `{name}`: no file in segments/ defines it"),
            );
        }
        self.segment_refs.push((name.clone(), node.referenced));
        Some(name)
    }

    /// A file's `name` (default: the file stem), where it was written, and its `description`.
    fn name_and_description(
        &mut self,
        f: &Fields<'_>,
    ) -> (Option<String>, Option<Location>, Option<String>) {
        let name_at = f.get("name").map(|n| n.referenced);
        let name = match f.get("name") {
            Some(node) => self.name(node, "`name`"),
            None => Some(
                self.file
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            ),
        };
        let description = f
            .get("description")
            .and_then(|n| self.string(n, "`description`"));
        (name, name_at, description)
    }

    // ---- Segment ----

    fn segment(&mut self, root: &SNode) -> Option<(SegmentDef, Option<Location>)> {
        if matches!(root.value, Node::Null) {
            self.error(
                root.referenced,
                "the file is empty: a segment needs `match`",
            );
            return None;
        }
        let f = self.fields(root, "a segment", &["name", "description", "match"])?;
        let (name, name_at, description) = self.name_and_description(&f);
        let matcher = self
            .required(&f, "match", "the segment")
            .map(|n| Condition::All(self.condition_list(n, Scope::Segment)));
        let references = self
            .segment_refs
            .iter()
            .map(|(name, at)| {
                let (line, column) = line_column(*at);
                SegmentRef {
                    name: name.clone(),
                    line,
                    column,
                }
            })
            .collect();
        let segment = SegmentDef {
            name: name?,
            description,
            matcher: matcher?,
            references,
            source: self.file.to_path_buf(),
        };
        Some((segment, name_at))
    }

    // ---- Workflow ----

    fn workflow(&mut self, root: &SNode) -> Option<(Workflow, Option<Location>)> {
        if matches!(root.value, Node::Null) {
            self.error(
                root.referenced,
                "the file is empty: a workflow needs `trigger` and `steps`",
            );
            return None;
        }
        let f = self.fields(root, "a workflow", WORKFLOW_KEYS)?;
        let (name, name_at, description) = self.name_and_description(&f);
        let category = f
            .get("category")
            .and_then(|n| self.category(n))
            .unwrap_or_default();
        let trigger = self
            .required(&f, "trigger", "the workflow")
            .and_then(|n| self.trigger(n));
        let conditions = f
            .get("conditions")
            .map(|n| self.condition_list(n, Scope::NoJourney("`conditions`")))
            .unwrap_or_default();
        let reentry = f
            .get("reentry")
            .and_then(|n| self.reentry(n))
            .unwrap_or_default();
        let exit_on = f
            .get("exit_on")
            .map(|n| self.exit_on(n))
            .unwrap_or_default();
        let goal = f.get("goal").and_then(|n| self.goal(n));
        let policy = PolicyOverrides {
            quiet_hours: f
                .get("quiet_hours")
                .and_then(|n| self.overridden(n, "`quiet_hours`", Self::quiet_hours))
                .unwrap_or_default(),
            frequency_cap: f
                .get("frequency_cap")
                .and_then(|n| self.overridden(n, "`frequency_cap`", Self::frequency_cap))
                .unwrap_or_default(),
        };
        let tracking = f.get("tracking").and_then(|n| match &n.value {
            Node::Bool(b) => Some(*b),
            other => {
                self.error(
                    n.referenced,
                    format!(
                        "`tracking` must be `true` or `false`, found {}",
                        describe(other)
                    ),
                );
                None
            }
        });
        let transport = f.get("transport").and_then(|n| self.transport(n));
        let steps = self.required(&f, "steps", "the workflow").and_then(|node| {
            if matches!(&node.value, Node::Seq(items) if items.is_empty()) {
                self.error(node.referenced, "`steps` must not be empty");
            }
            self.steps(node, "`steps`")
        });
        let workflow = Workflow {
            name: name?,
            description,
            category,
            trigger: trigger?,
            conditions,
            reentry,
            exit_on,
            goal,
            policy,
            tracking,
            transport,
            steps: steps?,
            source: self.file.to_path_buf(),
        };
        Some((workflow, name_at))
    }

    fn category(&mut self, node: &SNode) -> Option<Category> {
        self.parsed(node, "`category`", |s| match s {
            "marketing" => Ok(Category::Marketing),
            "transactional" => Ok(Category::Transactional),
            _ => Err(format!(
                "unknown category `{s}`, expected `marketing` or `transactional`"
            )),
        })
    }

    fn reentry(&mut self, node: &SNode) -> Option<Reentry> {
        self.parsed(node, "`reentry`", |s| match s {
            "never" => Ok(Reentry::Never),
            "always" => Ok(Reentry::Always),
            _ => s.parse().map(Reentry::After).map_err(|_| {
                format!("invalid `reentry` `{s}`: expected `never`, `always` or a duration: {DURATION_FORMS}")
            }),
        })
    }

    fn exit_on(&mut self, node: &SNode) -> Vec<EventMatch> {
        let Some(items) = self.list(node, "`exit_on`") else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                let f = self.fields(item, "an `exit_on` entry", &["event", "where"])?;
                let event = self
                    .required(&f, "event", "an `exit_on` entry")
                    .and_then(|n| self.name(n, "`event`"));
                let filter = f
                    .get("where")
                    .map(|n| self.condition_list(n, Scope::NoJourney("`exit_on`")))
                    .unwrap_or_default();
                Some(EventMatch {
                    event: event?,
                    filter,
                })
            })
            .collect()
    }

    /// `off` (or `false`) turns a `[sending]` setting off; a mapping sets it for this workflow.
    fn overridden<T>(
        &mut self,
        node: &SNode,
        what: &str,
        read: impl FnOnce(&mut Self, &SNode) -> Option<T>,
    ) -> Option<Override<T>> {
        match &node.value {
            Node::Bool(false) => Some(Override::Off),
            Node::Str(s) if s == "off" => Some(Override::Off),
            Node::Map(_) => read(self, node).map(Override::On),
            other => {
                self.error(
                    node.referenced,
                    format!(
                        "{what} must be a mapping or `off`, found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    fn quiet_hours(&mut self, node: &SNode) -> Option<QuietHours> {
        let f = self.fields(node, "`quiet_hours`", &["start", "end"])?;
        let start = self
            .required(&f, "start", "`quiet_hours`")
            .and_then(|n| self.parsed(n, "`start`", parse_time_of_day));
        let end = self
            .required(&f, "end", "`quiet_hours`")
            .and_then(|n| self.parsed(n, "`end`", parse_time_of_day));
        Some(QuietHours {
            start: start?,
            end: end?,
        })
    }

    fn frequency_cap(&mut self, node: &SNode) -> Option<FrequencyCap> {
        let f = self.fields(node, "`frequency_cap`", &["max", "per", "outcome"])?;
        let max = self.required(&f, "max", "`frequency_cap`").and_then(|n| {
            self.parsed(n, "`max`", |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|m| *m > 0)
                    .ok_or_else(|| format!("`max` must be a whole number above 0, found `{s}`"))
            })
        });
        let per = self
            .required(&f, "per", "`frequency_cap`")
            .and_then(|n| self.duration(n, "`per`"));
        let outcome = match f.get("outcome") {
            Some(n) => self.parsed(n, "`outcome`", parse_cap_outcome),
            None => Some(CapOutcome::default()),
        };
        Some(FrequencyCap {
            max: max?,
            per: per?,
            outcome: outcome?,
        })
    }

    fn goal(&mut self, node: &SNode) -> Option<Goal> {
        let f = self.fields(node, "`goal`", &["event", "within", "value"])?;
        let event = self
            .required(&f, "event", "`goal`")
            .and_then(|n| self.name(n, "`event`"));
        let within = f.get("within").and_then(|n| self.duration(n, "`within`"));
        let value = f.get("value").and_then(|n| self.name(n, "`value`"));
        Some(Goal {
            event: event?,
            within,
            value,
        })
    }

    // ---- Triggers ----

    fn trigger(&mut self, node: &SNode) -> Option<Trigger> {
        let f = self.fields(node, "`trigger`", TRIGGER_KEYS)?;
        let kind = self.one_kind(&f, TRIGGER_KINDS, "a trigger")?;
        if kind.name != "event" {
            for extra in ["where", "key"] {
                if let Some(e) = f.entry(extra) {
                    self.error(
                        e.key.referenced,
                        format!("`{extra}` is only allowed with an `event` trigger"),
                    );
                }
            }
        }
        match kind.name.as_str() {
            "event" => {
                let event = self.name(kind.value, "the trigger's `event`");
                let filter = f
                    .get("where")
                    .map(|n| self.condition_list(n, Scope::NoJourney("the trigger's `where`")))
                    .unwrap_or_default();
                let key = f.get("key").and_then(|n| self.name(n, "`key`"));
                Some(Trigger::Event(EventTrigger {
                    event: event?,
                    filter,
                    key,
                }))
            }
            "segment" => {
                let g = self.fields(kind.value, "a `segment` trigger", &["entered", "exited"])?;
                let which = self.one_kind(&g, &["entered", "exited"], "a `segment` trigger")?;
                let segment = self.segment_ref(which.value)?;
                Some(Trigger::Segment(if which.name == "entered" {
                    SegmentTrigger::Entered(segment)
                } else {
                    SegmentTrigger::Exited(segment)
                }))
            }
            "date" => {
                let g = self.fields(
                    kind.value,
                    "a `date` trigger",
                    &["attribute", "offset", "at"],
                )?;
                let attribute = self
                    .required(&g, "attribute", "a `date` trigger")
                    .and_then(|n| self.name(n, "`attribute`"));
                let offset = g
                    .get("offset")
                    .and_then(|n| self.parsed(n, "`offset`", str::parse));
                let at = g
                    .get("at")
                    .and_then(|n| self.parsed(n, "`at`", parse_time_of_day));
                Some(Trigger::Date(DateTrigger {
                    attribute: attribute?,
                    offset,
                    at,
                }))
            }
            _ => self.schedule(kind.value).map(Trigger::Schedule),
        }
    }

    fn schedule(&mut self, node: &SNode) -> Option<ScheduleTrigger> {
        let g = self.fields(
            node,
            "a `schedule` trigger",
            &["cron", "timezone", "audience"],
        )?;
        let cron = self
            .required(&g, "cron", "a `schedule` trigger")
            .and_then(|n| {
                self.parsed(n, "`cron`", |s| {
                    super::timing::parse_cron(s).map(|_| s.to_owned())
                })
            });
        let timezone = match g.get("timezone") {
            None => Some(ScheduleZone::Default),
            Some(n) => self.parsed(n, "`timezone`", |s| {
                if s == "contact" {
                    Ok(ScheduleZone::Contact)
                } else {
                    s.parse().map(ScheduleZone::Zone).map_err(|_| {
                        format!("unknown time zone `{s}`: expected an IANA name such as `Europe/Paris`, or `contact`")
                    })
                }
            }),
        };
        let audience = g.get("audience").and_then(|n| self.segment_ref(n));
        Some(ScheduleTrigger {
            cron: cron?,
            timezone: timezone?,
            audience,
        })
    }

    // ---- Steps ----

    fn steps(&mut self, node: &SNode, what: &str) -> Option<Vec<Step>> {
        let items = self.list(node, what)?;
        Some(items.iter().filter_map(|item| self.step(item)).collect())
    }

    fn step(&mut self, item: &SNode) -> Option<Step> {
        match &item.value {
            Node::Str(s) if s == "exit" => {
                return Some(Step {
                    id: None,
                    kind: StepKind::Exit,
                });
            }
            Node::Map(_) => {}
            other => {
                let found = match other {
                    Node::Str(s) => format!("`{s}`"),
                    _ => describe(other).to_owned(),
                };
                self.error(
                    item.referenced,
                    format!(
                        "a step is `exit` or a mapping with one of {}; found {found}",
                        one_of(STEP_KINDS)
                    ),
                );
                return None;
            }
        }
        let f = self.fields(item, "a step", STEP_KEYS)?;
        let id = f.get("id").and_then(|node| {
            let id = self.name(node, "a step `id`")?;
            if let Some(first) = self.step_ids.get(&id) {
                let line = first.line();
                self.error(
                    node.referenced,
                    format!("duplicate step id `{id}` (first used on line {line})"),
                );
            } else {
                self.step_ids.insert(id.clone(), node.referenced);
            }
            Some(id)
        });
        let kind = self.one_kind(&f, STEP_KINDS, "a step")?;
        let value = kind.value;
        let step_kind = match kind.name.as_str() {
            "wait" => self.wait(value).map(StepKind::Wait),
            "wait_for" => self.wait_for(value),
            "send" => self.send(value).map(StepKind::Send),
            "branch" => self.branch(value),
            "split" => self.split(value).map(StepKind::Split),
            "update" => self.update(value),
            "suppress" => self
                .name(value, "`suppress` (the reason recorded)")
                .map(|reason| StepKind::Suppress { reason }),
            _ => {
                if !matches!(value.value, Node::Null) {
                    self.error(value.referenced, "`exit` takes no value: write `- exit`");
                }
                Some(StepKind::Exit)
            }
        };
        // Later steps may refer to this send, even when the send itself had an error: saying
        // the id is unknown as well would only add noise.
        if let (Some(id), "send") = (&id, kind.name.as_str()) {
            self.earlier_sends.insert(id.clone());
        }
        Some(Step {
            id,
            kind: step_kind?,
        })
    }

    fn wait(&mut self, node: &SNode) -> Option<Wait> {
        if !matches!(node.value, Node::Map(_)) {
            return self.duration(node, "`wait`").map(Wait::For);
        }
        let f = self.fields(node, "`wait`", &["until", "days"])?;
        let until = self
            .required(&f, "until", "`wait`")
            .and_then(|n| self.parsed(n, "`until`", parse_time_of_day));
        let days = match f.get("days") {
            None => Some(Vec::new()),
            Some(n) => self.list(n, "`days`").map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        self.parsed(item, "a day", |s| {
                            s.parse::<Weekday>().map_err(|_| {
                                format!("unknown day `{s}`, expected one of `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`")
                            })
                        })
                    })
                    .collect()
            }),
        };
        Some(Wait::Until {
            until: until?,
            days: days?,
        })
    }

    fn wait_for(&mut self, node: &SNode) -> Option<StepKind> {
        let f = self.fields(node, "`wait_for`", &["event", "timeout"])?;
        let event = self
            .required(&f, "event", "`wait_for`")
            .and_then(|n| self.name(n, "`event`"));
        let timeout = self
            .required(&f, "timeout", "`wait_for`")
            .and_then(|n| self.duration(n, "`timeout`"));
        Some(StepKind::WaitFor {
            event: event?,
            timeout: timeout?,
        })
    }

    /// A transport name that must be configured in herald.toml.
    fn transport(&mut self, node: &SNode) -> Option<String> {
        let name = self.name(node, "`transport`")?;
        if !(self.known.transport)(&name) {
            self.error(
                node.referenced,
                format!("no transport named `{name}` in herald.toml"),
            );
        }
        Some(name)
    }

    fn send(&mut self, node: &SNode) -> Option<SendSpec> {
        let (template_node, transport, subject) = if matches!(node.value, Node::Map(_)) {
            let f = self.fields(node, "`send`", &["template", "transport", "subject"])?;
            let transport = f.get("transport").and_then(|n| self.transport(n));
            let subject = f.get("subject").and_then(|n| self.string(n, "`subject`"));
            (self.required(&f, "template", "`send`")?, transport, subject)
        } else {
            (node, None, None)
        };
        let template = self.name(template_node, "the template name")?;
        if !(self.known.template)(&template) {
            self.error(
                template_node.referenced,
                format!("template `{template}` not found in templates/"),
            );
        }
        Some(SendSpec {
            template,
            transport,
            subject,
        })
    }

    fn branch(&mut self, node: &SNode) -> Option<StepKind> {
        let f = self.fields(node, "`branch`", &["if", "then", "else"])?;
        let condition = self
            .required(&f, "if", "`branch`")
            .and_then(|n| self.condition(n, Scope::Journey));
        // Sends in one arm do not run before the other arm; after the branch, either may have.
        let before = self.earlier_sends.clone();
        let then = self
            .required(&f, "then", "`branch`")
            .and_then(|n| self.steps(n, "`then`"));
        let after_then = std::mem::replace(&mut self.earlier_sends, before);
        let otherwise = match f.get("else") {
            Some(n) => self.steps(n, "`else`"),
            None => Some(Vec::new()),
        };
        self.earlier_sends.extend(after_then);
        Some(StepKind::Branch {
            condition: condition?,
            then: then?,
            otherwise: otherwise?,
        })
    }

    fn split(&mut self, node: &SNode) -> Option<Vec<Variant>> {
        let items = self.list(node, "`split`")?;
        if items.is_empty() {
            self.error(node.referenced, "`split` needs at least one variant");
            return None;
        }
        let before = self.earlier_sends.clone();
        let mut after = before.clone();
        let mut names: HashMap<String, Location> = HashMap::new();
        let mut variants = Vec::new();
        for item in items {
            self.earlier_sends.clone_from(&before);
            let Some(f) = self.fields(item, "a `split` variant", &["variant", "weight", "steps"])
            else {
                continue;
            };
            let name = self
                .required(&f, "variant", "a `split` variant")
                .and_then(|n| self.name(n, "`variant`"))
                .filter(|name| {
                    let Some(at) = f.get("variant").map(|n| n.referenced) else {
                        return true;
                    };
                    if let Some(first) = names.get(name) {
                        let line = first.line();
                        self.error(
                            at,
                            format!("duplicate variant `{name}` (first used on line {line})"),
                        );
                        return false;
                    }
                    names.insert(name.clone(), at);
                    true
                });
            let weight = self
                .required(&f, "weight", "a `split` variant")
                .and_then(|n| match n.value {
                    Node::UInt(w) if w > 0 => u32::try_from(w).ok().or_else(|| {
                        self.error(n.referenced, format!("`weight` {w} is too large"));
                        None
                    }),
                    _ => {
                        let found = self
                            .scalar_text(n)
                            .unwrap_or_else(|| describe(&n.value).to_owned());
                        self.error(
                            n.referenced,
                            format!(
                                "`weight` must be a whole number greater than 0, found `{found}`"
                            ),
                        );
                        None
                    }
                });
            let steps = self
                .required(&f, "steps", "a `split` variant")
                .and_then(|n| self.steps(n, "`steps`"));
            after.extend(self.earlier_sends.drain());
            if let (Some(name), Some(weight), Some(steps)) = (name, weight, steps) {
                variants.push(Variant {
                    name,
                    weight,
                    steps,
                });
            }
        }
        self.earlier_sends = after;
        Some(variants)
    }

    fn update(&mut self, node: &SNode) -> Option<StepKind> {
        let f = self.fields(node, "`update`", &["attribute", "value"])?;
        let attribute = self
            .required(&f, "attribute", "`update`")
            .and_then(|n| self.name(n, "`attribute`"));
        let value = self
            .required(&f, "value", "`update`")
            .and_then(|n| self.json(n));
        Some(StepKind::Update {
            attribute: attribute?,
            value: value?,
        })
    }

    // ---- Conditions ----

    /// A list of conditions (or a single one), as in `where:` and `conditions:`.
    fn condition_list(&mut self, node: &SNode, scope: Scope) -> Vec<Condition> {
        match &node.value {
            Node::Seq(items) => items
                .iter()
                .filter_map(|item| self.condition(item, scope))
                .collect(),
            _ => self.condition(node, scope).into_iter().collect(),
        }
    }

    /// One condition; a list means all of them.
    fn condition(&mut self, node: &SNode, scope: Scope) -> Option<Condition> {
        match &node.value {
            Node::Seq(_) => Some(Condition::All(self.condition_list(node, scope))),
            Node::Map(_) => self.condition_map(node, scope),
            other => {
                self.error(
                    node.referenced,
                    format!(
                        "a condition is a mapping such as `{{ property: total, gt: 0 }}`, found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    fn condition_map(&mut self, node: &SNode, scope: Scope) -> Option<Condition> {
        let f = self.entries(node, "a condition")?;
        let subjects: Vec<&Entry<'_>> = f
            .entries
            .iter()
            .filter(|e| SUBJECTS.contains(&e.name.as_str()))
            .collect();
        let subject = match subjects.as_slice() {
            [one] => *one,
            [] => {
                // Most likely a misspelt subject: point at the keys nobody knows.
                let mut unknown = false;
                for e in &f.entries {
                    if !EVENT_CONDITION_KEYS.contains(&e.name.as_str()) {
                        unknown = true;
                        self.error(e.key.referenced, unknown_field(&e.name, SUBJECTS));
                    }
                }
                if !unknown {
                    self.error(
                        f.at,
                        format!("a condition needs one of {}", one_of(SUBJECTS)),
                    );
                }
                return None;
            }
            many => {
                let names: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
                self.error(
                    f.at,
                    format!(
                        "a condition must have exactly one of {}; found {}",
                        one_of(SUBJECTS),
                        and_list(&names)
                    ),
                );
                return None;
            }
        };
        let kind = subject.name.as_str();
        match scope {
            Scope::EventFilter if !matches!(kind, "property" | "all" | "any" | "not") => {
                self.error(
                    subject.key.referenced,
                    format!("`{kind}` is not allowed in an event's `where`, which filters the event's own properties: use `property`, `all`, `any` or `not`"),
                );
                return None;
            }
            Scope::Segment if matches!(kind, "property" | "opened" | "clicked") => {
                self.error(
                    subject.key.referenced,
                    format!("`{kind}` is not allowed in a segment, which is about the contact alone: use `attribute`, `event` or `segment`"),
                );
                return None;
            }
            Scope::NoJourney(place) if matches!(kind, "opened" | "clicked") => {
                self.error(
                    subject.key.referenced,
                    format!("`{kind}` is not allowed in {place}: there is no journey message yet"),
                );
                return None;
            }
            _ => {}
        }
        let allowed: &[&str] = match kind {
            "property" | "attribute" => OPERATORS,
            "event" => EVENT_CONDITION_KEYS,
            _ => &[],
        };
        let mut rest = Vec::new();
        let mut bad_keys = false;
        for e in f.entries.iter().filter(|e| e.name != kind) {
            if allowed.contains(&e.name.as_str()) {
                rest.push(e);
                continue;
            }
            bad_keys = true;
            let message = if allowed.is_empty() {
                format!(
                    "unknown field `{}`: a `{kind}` condition has no other keys",
                    e.name
                )
            } else if OPERATORS.contains(&e.name.as_str()) || EVENT_KEYS.contains(&e.name.as_str())
            {
                format!("`{}` is not allowed in a `{kind}` condition", e.name)
            } else {
                unknown_field(&e.name, allowed)
            };
            self.error(e.key.referenced, message);
        }
        let value = subject.value;
        match kind {
            "property" | "attribute" => {
                let path = self.name(value, &format!("the `{kind}` path"));
                let tests: Vec<Comparison> =
                    rest.iter().filter_map(|e| self.comparison(e)).collect();
                if rest.is_empty() && !bad_keys {
                    self.error(
                        f.at,
                        format!(
                            "a `{kind}` condition needs an operator: one of {}",
                            one_of(OPERATORS)
                        ),
                    );
                }
                let path = path?;
                Some(if kind == "property" {
                    Condition::Property { path, tests }
                } else {
                    Condition::Attribute { path, tests }
                })
            }
            "event" => self
                .event_condition(&f, subject, &rest)
                .map(Condition::Event),
            "segment" => self.segment_ref(value).map(Condition::Segment),
            "opened" | "clicked" => {
                let id = self.name(value, &format!("`{kind}`"))?;
                if matches!(scope, Scope::Journey) && !self.earlier_sends.contains(&id) {
                    self.error(
                        value.referenced,
                        format!(
                            "unknown step id `{id}` in `{kind}`: no earlier send step has that id"
                        ),
                    );
                }
                Some(if kind == "opened" {
                    Condition::Opened(id)
                } else {
                    Condition::Clicked(id)
                })
            }
            "all" => Some(Condition::All(self.condition_list(value, scope))),
            "any" => Some(Condition::Any(self.condition_list(value, scope))),
            _ => self
                .condition(value, scope)
                .map(|c| Condition::Not(Box::new(c))),
        }
    }

    fn comparison(&mut self, entry: &Entry<'_>) -> Option<Comparison> {
        let op = match entry.name.as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "in" => Op::In,
            "not_in" => Op::NotIn,
            "exists" => Op::Exists,
            _ => Op::Contains,
        };
        let node = entry.value;
        let name = &entry.name;
        let problem = match (op, &node.value) {
            (Op::In | Op::NotIn, Node::Seq(_)) | (Op::Exists, Node::Bool(_)) => None,
            (Op::In | Op::NotIn, other) => Some(format!(
                "`{name}` needs a list, e.g. `{name}: [US, CA]`, found {}",
                describe(other)
            )),
            (Op::Exists, other) => Some(format!(
                "`exists` needs `true` or `false`, found {}",
                describe(other)
            )),
            (
                Op::Gt | Op::Gte | Op::Lt | Op::Lte,
                other @ (Node::Null | Node::Seq(_) | Node::Map(_)),
            ) => Some(format!(
                "`{name}` needs a number or a string, found {}",
                describe(other)
            )),
            _ => None,
        };
        if let Some(message) = problem {
            self.error(node.referenced, message);
            return None;
        }
        Some(Comparison {
            op,
            value: self.json(node)?,
        })
    }

    fn event_condition(
        &mut self,
        f: &Fields<'_>,
        subject: &Entry<'_>,
        rest: &[&Entry<'_>],
    ) -> Option<EventCondition> {
        let name = self.name(subject.value, "the event name");
        let find = |key: &str| rest.iter().find(|e| e.name == key);
        let within = find("within").and_then(|e| self.duration(e.value, "`within`"));
        let filter = find("where")
            .map(|e| self.condition_list(e.value, Scope::EventFilter))
            .unwrap_or_default();
        let aggregates: Vec<&&Entry<'_>> = rest
            .iter()
            .filter(|e| AGGREGATES.contains(&e.name.as_str()))
            .collect();
        let operators: Vec<&&Entry<'_>> = rest
            .iter()
            .filter(|e| OPERATORS.contains(&e.name.as_str()))
            .collect();
        let measure = match aggregates.as_slice() {
            [] => {
                for op in &operators {
                    self.error(
                        op.key.referenced,
                        format!("`{}` beside `event` compares an aggregate: add one of {}, or count events with `count: {{ gte: 2 }}`", op.name, one_of(AGGREGATES)),
                    );
                }
                match find("count") {
                    Some(count) => self.count(count.value).map(EventMeasure::Count),
                    None => Some(EventMeasure::Count(vec![Comparison {
                        op: Op::Gte,
                        value: Value::from(1),
                    }])),
                }
            }
            [aggregate] => {
                if let Some(count) = find("count") {
                    self.error(
                        count.key.referenced,
                        format!("`count` cannot be combined with `{}`", aggregate.name),
                    );
                }
                let function = match aggregate.name.as_str() {
                    "sum" => AggregateFn::Sum,
                    "avg" => AggregateFn::Avg,
                    "min" => AggregateFn::Min,
                    _ => AggregateFn::Max,
                };
                let property = self.name(
                    aggregate.value,
                    &format!("the `{}` property", aggregate.name),
                );
                let tests: Vec<Comparison> = operators
                    .iter()
                    .filter_map(|e| self.comparison(e))
                    .collect();
                if operators.is_empty() {
                    self.error(
                        f.at,
                        format!(
                            "`{}` needs an operator beside it, e.g. `gte: 500`",
                            aggregate.name
                        ),
                    );
                }
                property.map(|property| EventMeasure::Aggregate {
                    function,
                    property,
                    tests,
                })
            }
            many => {
                let names: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
                self.error(
                    f.at,
                    format!(
                        "an `event` condition takes one of {}; found {}",
                        one_of(AGGREGATES),
                        and_list(&names)
                    ),
                );
                None
            }
        };
        Some(EventCondition {
            name: name?,
            within,
            filter,
            measure: measure?,
        })
    }

    /// `count: { gte: 2 }`: comparisons of a number of events.
    fn count(&mut self, node: &SNode) -> Option<Vec<Comparison>> {
        let f = self.fields(node, "`count`", COUNT_OPERATORS)?;
        if f.entries.is_empty() && !f.had_unknown {
            self.error(f.at, "`count` needs an operator, e.g. `{ gte: 2 }`");
        }
        // Check every operator before giving up, so that each bad one is reported.
        let mut tests = Vec::new();
        let mut ok = true;
        for e in &f.entries {
            let test = match e.value.value {
                Node::UInt(_) => self.comparison(e),
                _ => {
                    self.error(
                        e.value.referenced,
                        format!(
                            "`{}` in `count` needs a whole number, found {}",
                            e.name,
                            describe(&e.value.value)
                        ),
                    );
                    None
                }
            };
            ok &= test.is_some();
            tests.extend(test);
        }
        ok.then_some(tests)
    }
}

fn describe(node: &Node) -> &'static str {
    match node {
        Node::Null => "nothing",
        Node::Bool(_) => "a boolean",
        Node::Int(_) | Node::UInt(_) | Node::Float(_) => "a number",
        Node::Str(_) => "a string",
        Node::Seq(_) => "a list",
        Node::Map(_) => "a mapping",
    }
}

fn unknown_field(name: &str, expected: &[&str]) -> String {
    format!(
        "unknown field `{name}`, expected one of {}",
        one_of(expected)
    )
}

/// "`a`, `b`, `c`"
fn one_of(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "`a` and `b`", "`a`, `b` and `c`"
fn and_list(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and `{last}`", one_of(rest)),
        _ => one_of(names),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TEMPLATES: &[&str] = &[
        "cart-reminder",
        "cart-discount",
        "cart-last-chance",
        "winback",
        "winback-10",
        "winback-20",
    ];

    fn template_exists(name: &str) -> bool {
        TEMPLATES.contains(&name)
    }

    fn parse_ok(source: &str) -> Workflow {
        match parse_workflow(
            Path::new("workflows/test.yaml"),
            source,
            &Known::templates(&template_exists),
        ) {
            Ok(workflow) => workflow,
            Err(problems) => panic!(
                "expected the workflow to parse:\n{}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    /// The first line of each diagnostic: `file:line:column: message`.
    fn errors(file: &str, source: &str) -> Vec<String> {
        match parse_workflow(Path::new(file), source, &Known::templates(&template_exists)) {
            Ok(workflow) => panic!("expected {file} to fail, got {workflow:?}"),
            Err(problems) => problems
                .iter()
                .map(|d| d.to_string().lines().next().unwrap_or_default().to_owned())
                .collect(),
        }
    }

    fn days(n: i64) -> Duration {
        Duration(TimeDelta::days(n))
    }

    fn hours(n: i64) -> Duration {
        Duration(TimeDelta::hours(n))
    }

    fn send(template: &str) -> Step {
        Step {
            id: None,
            kind: StepKind::Send(SendSpec {
                template: template.to_owned(),
                transport: None,
                subject: None,
            }),
        }
    }

    fn cmp(op: Op, value: Value) -> Comparison {
        Comparison { op, value }
    }

    /// A workflow around a trigger (and steps) taken from FORMATS.md.
    fn with_trigger(trigger: &str) -> String {
        format!("{trigger}\nsteps:\n  - send: winback\n")
    }

    fn with_steps(steps: &str) -> String {
        format!("trigger:\n  event: lapsed\nsteps:\n{steps}")
    }

    // ---- FORMATS.md examples ----

    const CART_ABANDONMENT: &str = r#"name: cart-abandonment           # defaults to the file stem; unique
description: Bring shoppers back to the cart they left.
category: marketing              # marketing (default) | transactional
trigger:
  event: cart_updated
  where: [ { property: item_count, gt: 0 } ]
  key: cart_id                   # optional: one active journey per (contact, event property)
conditions:                      # optional: must hold for the contact to enter
  - attribute: country
    in: [US, CA]
reentry: 7d                      # never (default) | always | a duration since last entry
exit_on:                         # leave the journey as soon as one of these events arrives
  - event: order_placed
goal:                            # what counts as a conversion for reports
  event: order_placed
  within: 5d
  value: total                   # numeric event property summed as revenue
steps:
  - wait: 1h
  - id: reminder                 # optional stable id; referenced by opened/clicked and reports
    send: cart-reminder          # a template name
  - wait: 23h
  - branch:
      if: { clicked: reminder }
      then:
        - send: cart-discount
      else:
        - send: cart-last-chance
"#;

    #[test]
    fn cart_abandonment_example() {
        let path = Path::new("workflows/cart-abandonment.yaml");
        let workflow = parse_workflow(path, CART_ABANDONMENT, &Known::templates(&template_exists));
        let expected = Workflow {
            name: "cart-abandonment".to_owned(),
            description: Some("Bring shoppers back to the cart they left.".to_owned()),
            category: Category::Marketing,
            trigger: Trigger::Event(EventTrigger {
                event: "cart_updated".to_owned(),
                filter: vec![Condition::Property {
                    path: "item_count".to_owned(),
                    tests: vec![cmp(Op::Gt, json!(0))],
                }],
                key: Some("cart_id".to_owned()),
            }),
            conditions: vec![Condition::Attribute {
                path: "country".to_owned(),
                tests: vec![cmp(Op::In, json!(["US", "CA"]))],
            }],
            reentry: Reentry::After(days(7)),
            exit_on: vec![EventMatch {
                event: "order_placed".to_owned(),
                filter: vec![],
            }],
            goal: Some(Goal {
                event: "order_placed".to_owned(),
                within: Some(days(5)),
                value: Some("total".to_owned()),
            }),
            policy: PolicyOverrides::default(),
            tracking: None,
            transport: None,
            steps: vec![
                Step {
                    id: None,
                    kind: StepKind::Wait(Wait::For(hours(1))),
                },
                Step {
                    id: Some("reminder".to_owned()),
                    ..send("cart-reminder")
                },
                Step {
                    id: None,
                    kind: StepKind::Wait(Wait::For(hours(23))),
                },
                Step {
                    id: None,
                    kind: StepKind::Branch {
                        condition: Condition::Clicked("reminder".to_owned()),
                        then: vec![send("cart-discount")],
                        otherwise: vec![send("cart-last-chance")],
                    },
                },
            ],
            source: path.to_path_buf(),
        };
        assert_eq!(workflow, Ok(expected));
    }

    #[test]
    fn defaults() {
        let source = "trigger: { event: signup }\nsteps: [ { send: winback } ]\n";
        let workflow = parse_workflow(
            Path::new("workflows/welcome.yml"),
            source,
            &Known::templates(&template_exists),
        );
        let Ok(workflow) = workflow else {
            panic!("{workflow:?}")
        };
        assert_eq!(workflow.name, "welcome");
        assert_eq!(workflow.description, None);
        assert_eq!(workflow.category, Category::Marketing);
        assert_eq!(workflow.reentry, Reentry::Never);
        assert_eq!(workflow.conditions, vec![]);
        assert_eq!(workflow.exit_on, vec![]);
        assert_eq!(workflow.goal, None);
        let Trigger::Event(trigger) = workflow.trigger else {
            panic!()
        };
        assert_eq!(trigger.filter, vec![]);
        assert_eq!(trigger.key, None);
    }

    #[test]
    fn category_and_reentry_forms() {
        let w = parse_ok(
            "category: transactional\nreentry: always\ntrigger: { event: x }\nsteps: [exit]\n",
        );
        assert_eq!(w.category, Category::Transactional);
        assert_eq!(w.reentry, Reentry::Always);
        let w = parse_ok("reentry: never\ntrigger: { event: x }\nsteps: [exit]\n");
        assert_eq!(w.reentry, Reentry::Never);
    }

    #[test]
    fn segment_triggers() {
        let w = parse_ok(&with_trigger(
            "trigger: { segment: { entered: lapsed-customers } }     # or { exited: … }",
        ));
        assert_eq!(
            w.trigger,
            Trigger::Segment(SegmentTrigger::Entered("lapsed-customers".into()))
        );
        let w = parse_ok(&with_trigger(
            "trigger: { segment: { exited: lapsed-customers } }",
        ));
        assert_eq!(
            w.trigger,
            Trigger::Segment(SegmentTrigger::Exited("lapsed-customers".into()))
        );
    }

    #[test]
    fn date_trigger() {
        let w = parse_ok(&with_trigger(
            r#"trigger:
  date:
    attribute: birthday          # "YYYY-MM-DD" or "MM-DD"; yearly
    offset: -3d                  # optional: three days before
    at: "09:00"                  # contact-local time"#,
        ));
        assert_eq!(
            w.trigger,
            Trigger::Date(DateTrigger {
                attribute: "birthday".into(),
                offset: Some(SignedDuration(TimeDelta::days(-3))),
                at: NaiveTime::from_hms_opt(9, 0, 0),
            })
        );
        let w = parse_ok(&with_trigger(
            "trigger: { date: { attribute: signup_date, at: 17:30 } }",
        ));
        assert_eq!(
            w.trigger,
            Trigger::Date(DateTrigger {
                attribute: "signup_date".into(),
                offset: None,
                at: NaiveTime::from_hms_opt(17, 30, 0),
            })
        );
    }

    #[test]
    fn schedule_trigger() {
        let w = parse_ok(&with_trigger(
            r#"trigger:
  schedule:
    cron: "0 9 * * 1"            # 5-field cron
    timezone: contact            # an IANA zone, or `contact` for each contact's own 09:00
    audience: repeat-customers   # segment; default: every subscribed contact"#,
        ));
        assert_eq!(
            w.trigger,
            Trigger::Schedule(ScheduleTrigger {
                cron: "0 9 * * 1".into(),
                timezone: ScheduleZone::Contact,
                audience: Some("repeat-customers".into()),
            })
        );
        let w = parse_ok(&with_trigger(
            "trigger: { schedule: { cron: '30 8 * * *', timezone: Europe/Paris } }",
        ));
        assert_eq!(
            w.trigger,
            Trigger::Schedule(ScheduleTrigger {
                cron: "30 8 * * *".into(),
                timezone: ScheduleZone::Zone(chrono_tz::Europe::Paris),
                audience: None,
            })
        );
        let w = parse_ok(&with_trigger(
            "trigger: { schedule: { cron: '0 9 * * 1' } }",
        ));
        let Trigger::Schedule(schedule) = w.trigger else {
            panic!()
        };
        assert_eq!(schedule.timezone, ScheduleZone::Default);
    }

    #[test]
    fn etiquette_overrides() {
        let w = parse_ok(
            "trigger: { event: x }\nquiet_hours: { start: \"22:00\", end: \"07:30\" }\nfrequency_cap: { max: 3, per: 1w, outcome: defer }\nsteps: [exit]\n",
        );
        assert_eq!(
            w.policy.quiet_hours,
            Override::On(QuietHours {
                start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
                end: NaiveTime::from_hms_opt(7, 30, 0).unwrap(),
            })
        );
        assert_eq!(
            w.policy.frequency_cap,
            Override::On(FrequencyCap {
                max: 3,
                per: "1w".parse().unwrap(),
                outcome: CapOutcome::Defer
            })
        );
        let off = parse_ok(
            "trigger: { event: x }\nquiet_hours: off\nfrequency_cap: false\nsteps: [exit]\n",
        );
        assert_eq!(
            (off.policy.quiet_hours, off.policy.frequency_cap),
            (Override::Off, Override::Off)
        );
        assert_eq!(
            errors(
                "w.yaml",
                "trigger: { event: x }\nfrequency_cap: { max: 0, per: 1d, outcome: later }\nsteps: [exit]\n"
            ),
            vec![
                "w.yaml:2:23: `max` must be a whole number above 0, found `0`",
                "w.yaml:2:44: unknown frequency cap outcome `later`, expected `skip` or `defer`",
            ]
        );
    }

    #[test]
    fn other_steps() {
        let w = parse_ok(&with_steps(
            r#"- wait: { until: "09:00", days: [mon, tue, wed, thu, fri] }   # next such local time
- wait_for: { event: order_placed, timeout: 2d }               # then branch on { event: … }
- send: { template: winback, transport: marketing, subject: "Override {{contact.first_name}}" }
- split:                                                        # A/B test, sticky per contact
    - { variant: ten-off,    weight: 50, steps: [ { send: winback-10 } ] }
    - { variant: twenty-off, weight: 50, steps: [ { send: winback-20 } ] }
- update: { attribute: lifecycle_stage, value: customer }
- exit
"#,
        ));
        let step = |kind| Step { id: None, kind };
        assert_eq!(
            w.steps,
            vec![
                step(StepKind::Wait(Wait::Until {
                    until: NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default(),
                    days: vec![
                        Weekday::Mon,
                        Weekday::Tue,
                        Weekday::Wed,
                        Weekday::Thu,
                        Weekday::Fri
                    ],
                })),
                step(StepKind::WaitFor {
                    event: "order_placed".into(),
                    timeout: days(2)
                }),
                step(StepKind::Send(SendSpec {
                    template: "winback".into(),
                    transport: Some("marketing".into()),
                    subject: Some("Override {{contact.first_name}}".into()),
                })),
                step(StepKind::Split(vec![
                    Variant {
                        name: "ten-off".into(),
                        weight: 50,
                        steps: vec![send("winback-10")]
                    },
                    Variant {
                        name: "twenty-off".into(),
                        weight: 50,
                        steps: vec![send("winback-20")],
                    },
                ])),
                step(StepKind::Update {
                    attribute: "lifecycle_stage".into(),
                    value: json!("customer")
                }),
                step(StepKind::Exit),
            ]
        );
    }

    #[test]
    fn exit_as_key_and_wait_until_every_day() {
        let w = parse_ok(&with_steps(
            "  - wait: { until: '7:05' }\n  - id: done\n    exit:\n",
        ));
        assert_eq!(
            w.steps,
            vec![
                Step {
                    id: None,
                    kind: StepKind::Wait(Wait::Until {
                        until: NaiveTime::from_hms_opt(7, 5, 0).unwrap_or_default(),
                        days: vec![],
                    }),
                },
                Step {
                    id: Some("done".into()),
                    kind: StepKind::Exit
                },
            ]
        );
    }

    #[test]
    fn conditions_example() {
        // FORMATS.md "Conditions", with the `…` placeholders filled in; in a branch so that
        // `opened`/`clicked` have an earlier send to refer to.
        let w = parse_ok(&with_steps(
            r#"  - id: reminder
    send: winback
  - branch:
      if:
        - property: item_count      # a property of the triggering event (dotted paths allowed)
          gt: 0
        - attribute: country        # a contact attribute (dotted paths allowed)
          in: [US, CA]
        - event: order_placed       # behavior: the contact's events of that name…
          within: 90d               # …in the last 90 days (optional; default: ever)
          count: { gte: 2 }         # optional; default { gte: 1 }
          where: [ { property: total, gte: 50 } ]   # optional filter on those events
        - event: order_placed       # aggregate of a numeric property instead of a count
          sum: total
          gte: 500
          within: 365d
        - segment: high-value       # membership
        - opened: reminder          # this journey's message sent by step `reminder` was opened
        - clicked: reminder         # … or clicked
        - all: [ { attribute: vip, eq: true } ]          # every condition holds
        - any: [ { attribute: plan, ne: free }, { attribute: tags, contains: beta } ]
        - not: { attribute: email, exists: false }       # negation
        - event: signup
      then: [exit]
"#,
        ));
        let StepKind::Branch {
            condition,
            then,
            otherwise,
        } = &w.steps[1].kind
        else {
            panic!("{:?}", w.steps)
        };
        assert_eq!(
            then,
            &vec![Step {
                id: None,
                kind: StepKind::Exit
            }]
        );
        assert_eq!(otherwise, &vec![]);
        let attribute = |path: &str, op, value| Condition::Attribute {
            path: path.into(),
            tests: vec![cmp(op, value)],
        };
        assert_eq!(
            condition,
            &Condition::All(vec![
                Condition::Property {
                    path: "item_count".into(),
                    tests: vec![cmp(Op::Gt, json!(0))]
                },
                attribute("country", Op::In, json!(["US", "CA"])),
                Condition::Event(EventCondition {
                    name: "order_placed".into(),
                    within: Some(days(90)),
                    filter: vec![Condition::Property {
                        path: "total".into(),
                        tests: vec![cmp(Op::Gte, json!(50))],
                    }],
                    measure: EventMeasure::Count(vec![cmp(Op::Gte, json!(2))]),
                }),
                Condition::Event(EventCondition {
                    name: "order_placed".into(),
                    within: Some(days(365)),
                    filter: vec![],
                    measure: EventMeasure::Aggregate {
                        function: AggregateFn::Sum,
                        property: "total".into(),
                        tests: vec![cmp(Op::Gte, json!(500))],
                    },
                }),
                Condition::Segment("high-value".into()),
                Condition::Opened("reminder".into()),
                Condition::Clicked("reminder".into()),
                Condition::All(vec![attribute("vip", Op::Eq, json!(true))]),
                Condition::Any(vec![
                    attribute("plan", Op::Ne, json!("free")),
                    attribute("tags", Op::Contains, json!("beta")),
                ]),
                Condition::Not(Box::new(attribute("email", Op::Exists, json!(false)))),
                Condition::Event(EventCondition {
                    name: "signup".into(),
                    within: None,
                    filter: vec![],
                    measure: EventMeasure::Count(vec![cmp(Op::Gte, json!(1))]),
                }),
            ])
        );
    }

    #[test]
    fn segment_match_example_as_entry_conditions() {
        let w = parse_ok(
            "trigger: { event: x }\nconditions:\n  - event: order_placed\n  - not: { event: order_placed, within: 90d }\nsteps: [exit]\n",
        );
        let event = |within| {
            Condition::Event(EventCondition {
                name: "order_placed".into(),
                within,
                filter: vec![],
                measure: EventMeasure::Count(vec![cmp(Op::Gte, json!(1))]),
            })
        };
        assert_eq!(
            w.conditions,
            vec![event(None), Condition::Not(Box::new(event(Some(days(90)))))]
        );
    }

    #[test]
    fn scalars_keep_their_spelling() {
        // `NO` is not false, `02134` not 2134, and an id written as a number is still an id.
        let w = parse_ok(&with_steps(
            "  - id: 1\n    send: winback\n  - update: { attribute: zip, value: 02134 }\n  - update: { attribute: country, value: NO }\n  - branch: { if: { opened: 1 }, then: [exit] }\n",
        ));
        assert_eq!(w.steps[0].id.as_deref(), Some("1"));
        assert_eq!(
            w.steps[1].kind,
            StepKind::Update {
                attribute: "zip".into(),
                value: json!("02134")
            }
        );
        assert_eq!(
            w.steps[2].kind,
            StepKind::Update {
                attribute: "country".into(),
                value: json!("NO")
            }
        );
    }

    #[test]
    fn clicked_sees_sends_in_execution_order() {
        // Earlier arms of an earlier branch count; the other arm of the same branch does not.
        let ok = with_steps(
            r#"  - branch:
      if: { segment: vip }
      then:
        - id: a
          send: winback
        - branch: { if: { clicked: a }, then: [exit] }
      else:
        - id: b
          send: winback
  - split:
      - { variant: x, weight: 1, steps: [ { id: c, send: winback } ] }
      - { variant: y, weight: 1, steps: [] }
  - branch: { if: { any: [ { opened: a }, { opened: b }, { clicked: c } ] }, then: [exit] }
"#,
        );
        parse_ok(&ok);
        let bad = with_steps(
            r#"  - branch:
      if: { segment: vip }
      then:
        - id: a
          send: winback
      else:
        - branch: { if: { clicked: a }, then: [exit] }
  - id: d
    wait: 1h
  - branch: { if: { opened: d }, then: [exit] }
"#,
        );
        assert_eq!(
            errors("workflows/w.yaml", &bad),
            vec![
                "workflows/w.yaml:10:36: unknown step id `a` in `clicked`: no earlier send step has that id",
                "workflows/w.yaml:13:29: unknown step id `d` in `opened`: no earlier send step has that id",
            ]
        );
    }

    // ---- Durations and times ----

    #[test]
    fn durations() {
        let ok = |s: &str| s.parse::<Duration>().map(|d| d.0);
        assert_eq!(ok("30s"), Ok(TimeDelta::seconds(30)));
        assert_eq!(ok("15m"), Ok(TimeDelta::minutes(15)));
        assert_eq!(ok("1h"), Ok(TimeDelta::hours(1)));
        assert_eq!(ok("2d"), Ok(TimeDelta::days(2)));
        assert_eq!(ok("1w"), Ok(TimeDelta::weeks(1)));
        assert_eq!(ok("0s"), Ok(TimeDelta::zero()));
        assert_eq!(ok("007m"), Ok(TimeDelta::minutes(7)));
        for bad in [
            "", "1 hour", "10x", "h", "1", "-1h", "+1h", "1.5h", "1H", " 1h", "1h ", "1h30m", "１h",
        ] {
            let err = ok(bad).unwrap_err();
            assert!(
                err.contains("expected a whole number and a unit"),
                "{bad}: {err}"
            );
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        assert_eq!(
            ok("99999999999999999999d"),
            Err("duration `99999999999999999999d` is too long".into())
        );
        assert_eq!(
            ok("999999999999999w"),
            Err("duration `999999999999999w` is too long".into())
        );
        assert_eq!(
            Duration::parse_setting("workers.lease", "30s"),
            Ok(Duration(TimeDelta::seconds(30)))
        );
    }

    #[test]
    fn signed_durations() {
        let ok = |s: &str| s.parse::<SignedDuration>().map(|d| d.0);
        assert_eq!(ok("-3d"), Ok(TimeDelta::days(-3)));
        assert_eq!(ok("+1d"), Ok(TimeDelta::days(1)));
        assert_eq!(ok("2h"), Ok(TimeDelta::hours(2)));
        for bad in ["", "-", "+", "--1d", "+-1d", "- 1d", "3 days"] {
            let err = ok(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid offset `{bad}`: expected")),
                "{err}"
            );
        }
    }

    #[test]
    fn times_of_day() {
        assert_eq!(
            parse_time_of_day("09:00"),
            Ok(NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default())
        );
        assert_eq!(
            parse_time_of_day("9:30"),
            Ok(NaiveTime::from_hms_opt(9, 30, 0).unwrap_or_default())
        );
        assert_eq!(
            parse_time_of_day("23:59"),
            Ok(NaiveTime::from_hms_opt(23, 59, 0).unwrap_or_default())
        );
        assert_eq!(parse_time_of_day("00:00"), Ok(NaiveTime::MIN));
        for bad in [
            "24:00", "12:60", "0900", "9:5", "09:00:00", "aa:bb", "", ":", "-1:00", "+9:00",
            "٠٩:00",
        ] {
            let err = parse_time_of_day(bad).unwrap_err();
            assert!(err.contains("expected HH:MM, 24-hour"), "{bad}: {err}");
        }
    }

    // ---- Invalid files ----

    /// Each fixture with the first line of each diagnostic it must produce.
    const FIXTURES: &[(&str, &str, &[&str])] = &[
        (
            "unknown-field.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/unknown-field.yaml"),
            &[
                "7:5: unknown field `delay`, expected one of `id`, `wait`, `wait_for`, `send`, `branch`, `split`, `update`, `suppress`, `exit`",
            ],
        ),
        (
            "bad-duration.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/bad-duration.yaml"),
            &[
                "4:11: invalid duration `1 hour`: expected a whole number and a unit (s, m, h, d or w) with no space between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w`",
                "6:11: invalid duration `10x`: expected a whole number and a unit (s, m, h, d or w) with no space between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w`",
            ],
        ),
        (
            "missing-template.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/missing-template.yaml"),
            &["6:17: template `no-such-template` not found in templates/"],
        ),
        (
            "unknown-clicked.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/unknown-clicked.yaml"),
            &["5:22: unknown step id `reminder` in `clicked`: no earlier send step has that id"],
        ),
        (
            "duplicate-step-id.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/duplicate-step-id.yaml"),
            &["7:9: duplicate step id `reminder` (first used on line 4)"],
        ),
        (
            "two-kinds.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/two-kinds.yaml"),
            &[
                "4:5: a step must have exactly one of `wait`, `wait_for`, `send`, `branch`, `split`, `update`, `suppress`, `exit`; found `wait` and `send`",
            ],
        ),
        (
            "bad-operator.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/bad-operator.yaml"),
            &[
                "5:7: unknown field `greater_than`, expected one of `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `in`, `not_in`, `exists`, `contains`",
            ],
        ),
        (
            "in-not-list.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/in-not-list.yaml"),
            &["5:9: `in` needs a list, e.g. `in: [US, CA]`, found a string"],
        ),
        (
            "duplicate-key.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/duplicate-key.yaml"),
            &["5:1: duplicate key `steps` (first given on line 3)"],
        ),
        (
            "syntax-error.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/syntax-error.yaml"),
            &["4:6: invalid YAML: illegal placement of ':' indicator"],
        ),
        (
            "opened-in-conditions.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/opened-in-conditions.yaml"),
            &["4:5: `opened` is not allowed in `conditions`: there is no journey message yet"],
        ),
        (
            "many-errors.yaml",
            include_str!("../../tests/fixtures/workflows/invalid/many-errors.yaml"),
            &[
                "2:11: unknown category `promotional`, expected `marketing` or `transactional`",
                "5:10: invalid `reentry` `sometimes`: expected `never`, `always` or a duration: a whole number and a unit (s, m, h, d or w) with no space between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w`",
                "7:11: invalid duration `2 days`: expected a whole number and a unit (s, m, h, d or w) with no space between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w`",
                "8:11: template `missing-one` not found in templates/",
                "10:21: unknown step id `nowhere` in `opened`: no earlier send step has that id",
                "11:23: template `missing-two` not found in templates/",
            ],
        ),
    ];

    #[test]
    fn invalid_fixtures() {
        for (name, source, expected) in FIXTURES {
            let file = format!("workflows/{name}");
            let expected: Vec<String> = expected.iter().map(|e| format!("{file}:{e}")).collect();
            assert_eq!(errors(&file, source), expected);
        }
    }

    #[test]
    fn every_fixture_file_is_tested_and_fails() {
        // file!() is relative to the package root in the main crate, and absolute when this
        // file is included through an absolute #[path].
        let this_file = Path::new(file!());
        let this_file = if this_file.is_absolute() {
            this_file.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(this_file)
        };
        let Some(root) = this_file.ancestors().nth(3) else {
            panic!("{}", this_file.display())
        };
        let dir = root.join("tests/fixtures/workflows/invalid");
        let (workflows, problems) = load_dir(&dir, &Known::templates(&template_exists));
        assert_eq!(workflows, vec![]);
        let mut failing: Vec<String> = problems
            .iter()
            .filter_map(|d| Some(d.file.file_name()?.to_string_lossy().into_owned()))
            .collect();
        failing.dedup();
        let mut tested: Vec<String> = FIXTURES
            .iter()
            .map(|(name, ..)| (*name).to_owned())
            .collect();
        tested.sort();
        assert_eq!(failing, tested);
    }

    #[test]
    fn diagnostics_carry_a_snippet() {
        let (name, source, _) = FIXTURES[0];
        let Err(problems) =
            parse_workflow(Path::new(name), source, &Known::templates(&template_exists))
        else {
            panic!()
        };
        assert_eq!(
            problems[0].to_string(),
            "unknown-field.yaml:7:5: unknown field `delay`, expected one of `id`, `wait`, `wait_for`, `send`, `branch`, `split`, `update`, `suppress`, `exit`\n    |\n  7 |   - delay: 1h\n    |     ^"
        );
    }

    /// Checks each source against its expected `line:column: message`s, reporting every
    /// mismatch at once.
    fn assert_cases<'c>(cases: impl Iterator<Item = (String, &'c [&'c str])>) {
        let mut mismatches = Vec::new();
        for (source, expected) in cases {
            let expected: Vec<String> = expected.iter().map(|e| format!("w.yaml:{e}")).collect();
            let actual = errors("w.yaml", &source);
            if actual != expected {
                mismatches.push(format!(
                    "{source}\n  expected {expected:#?}\n  actual {actual:#?}"
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
    }

    #[test]
    fn structural_errors() {
        let cases: &[(&str, &[&str])] = &[
            (
                "",
                &["1:1: the file is empty: a workflow needs `trigger` and `steps`"],
            ),
            (
                "- a\n- b\n",
                &["1:1: a workflow must be a mapping, found a list"],
            ),
            (
                "name: x\n",
                &[
                    "1:1: the workflow is missing `trigger`",
                    "1:1: the workflow is missing `steps`",
                ],
            ),
            (
                "trigger: { event: x }\nsteps: []\n",
                &["2:8: `steps` must not be empty"],
            ),
            (
                "trigger: { event: x }\nsteps: { send: winback }\n",
                &["2:8: `steps` must be a list, found a mapping"],
            ),
            (
                "trigger: {}\nsteps: [exit]\n",
                &["1:10: a trigger needs one of `event`, `segment`, `date`, `schedule`"],
            ),
            (
                "trigger: { event: a, segment: { entered: b } }\nsteps: [exit]\n",
                &[
                    "1:10: a trigger must have exactly one of `event`, `segment`, `date`, `schedule`; found `event` and `segment`",
                ],
            ),
            (
                "trigger: { segment: { entered: b }, key: id }\nsteps: [exit]\n",
                &["1:37: `key` is only allowed with an `event` trigger"],
            ),
            (
                "trigger: { event: a, key: '' }\nsteps: [exit]\n",
                &["1:27: `key` must not be empty"],
            ),
            (
                "trigger: { schedule: { cron: '0 9 * *', timezone: Mars/Olympus } }\nsteps: [exit]\n",
                &[
                    "1:30: `0 9 * *` is not a 5-field cron expression (minute hour day month weekday)",
                    "1:51: unknown time zone `Mars/Olympus`: expected an IANA name such as `Europe/Paris`, or `contact`",
                ],
            ),
            (
                "trigger: { date: { attribute: birthday, offset: 3 days, at: '9am' } }\nsteps: [exit]\n",
                &[
                    "1:49: invalid offset `3 days`: expected an optional sign and a whole number and a unit (s, m, h, d or w) with no space between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w` (`-3d` is three days before)",
                    "1:61: invalid time `9am`: expected HH:MM, 24-hour, e.g. `09:00` or `17:30`",
                ],
            ),
            (
                "trigger: { event: x }\nsteps: [wait]\n",
                &[
                    "2:9: a step is `exit` or a mapping with one of `wait`, `wait_for`, `send`, `branch`, `split`, `update`, `suppress`, `exit`; found `wait`",
                ],
            ),
            (
                "trigger: { event: x }\nsteps: [ { id: a } ]\n",
                &[
                    "2:10: a step needs one of `wait`, `wait_for`, `send`, `branch`, `split`, `update`, `suppress`, `exit`",
                ],
            ),
            (
                "trigger: { event: x }\nsteps: [ { exit: now } ]\n",
                &["2:18: `exit` takes no value: write `- exit`"],
            ),
            (
                "trigger: { event: x }\nsteps: [ { wait: { until: '25:00', days: [mon, someday] } } ]\n",
                &[
                    "2:27: invalid time `25:00`: expected HH:MM, 24-hour, e.g. `09:00` or `17:30`",
                    "2:48: unknown day `someday`, expected one of `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`",
                ],
            ),
            (
                "trigger: { event: x }\nsteps: [ { wait_for: { event: y } } ]\n",
                &["2:22: `wait_for` is missing `timeout`"],
            ),
            (
                "trigger: { event: x }\nsteps: [ { branch: { if: { segment: a } } } ]\n",
                &["2:20: `branch` is missing `then`"],
            ),
            (
                "trigger: { event: x }\nsteps:\n  - split:\n    - { variant: a, weight: 0, steps: [] }\n    - { variant: a, weight: 1, steps: [] }\n    - { variant: b, weight: -1, steps: [] }\n",
                &[
                    "4:29: `weight` must be a whole number greater than 0, found `0`",
                    "5:18: duplicate variant `a` (first used on line 4)",
                    "6:29: `weight` must be a whole number greater than 0, found `-1`",
                ],
            ),
            (
                "trigger: { event: x }\nsteps: [ { split: [] } ]\n",
                &["2:19: `split` needs at least one variant"],
            ),
            (
                "trigger: { event: x }\nsteps: [ { update: { attribute: a } } ]\n",
                &["2:20: `update` is missing `value`"],
            ),
            (
                "trigger: { event: x }\nsteps: [ { send: { template: winback, transport: [a] } } ]\n",
                &["2:50: `transport` must be a string, found a list"],
            ),
            (
                "trigger: { event: x }\nexit_on: { event: y }\nsteps: [exit]\n",
                &["2:10: `exit_on` must be a list, found a mapping"],
            ),
            (
                "trigger: { event: x }\ngoal: { within: 2d }\nsteps: [exit]\n",
                &["2:7: `goal` is missing `event`"],
            ),
        ];
        assert_cases(
            cases
                .iter()
                .map(|(source, expected)| ((*source).to_owned(), *expected)),
        );
    }

    #[test]
    fn condition_errors() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[ { propery: a, gt: 1 } ]",
                &[
                    "3:17: unknown field `propery`, expected one of `property`, `attribute`, `event`, `segment`, `opened`, `clicked`, `all`, `any`, `not`",
                ],
            ),
            (
                "[ { gt: 1 } ]",
                &[
                    "3:15: a condition needs one of `property`, `attribute`, `event`, `segment`, `opened`, `clicked`, `all`, `any`, `not`",
                ],
            ),
            (
                "[ { property: a, attribute: b, eq: 1 } ]",
                &[
                    "3:15: a condition must have exactly one of `property`, `attribute`, `event`, `segment`, `opened`, `clicked`, `all`, `any`, `not`; found `property` and `attribute`",
                ],
            ),
            (
                "[ { property: a } ]",
                &[
                    "3:15: a `property` condition needs an operator: one of `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `in`, `not_in`, `exists`, `contains`",
                ],
            ),
            (
                "[ { property: a, within: 2d } ]",
                &["3:30: `within` is not allowed in a `property` condition"],
            ),
            (
                "[ { segment: a, eq: 1 } ]",
                &["3:29: unknown field `eq`: a `segment` condition has no other keys"],
            ),
            (
                "[ { attribute: a, exists: yes } ]",
                &["3:39: `exists` needs `true` or `false`, found a string"],
            ),
            (
                "[ { attribute: a, not_in: b } ]",
                &["3:39: `not_in` needs a list, e.g. `not_in: [US, CA]`, found a string"],
            ),
            (
                "[ { attribute: a, gt: [1] } ]",
                &["3:35: `gt` needs a number or a string, found a list"],
            ),
            (
                "[ { event: a, gte: 5 } ]",
                &[
                    "3:27: `gte` beside `event` compares an aggregate: add one of `sum`, `avg`, `min`, `max`, or count events with `count: { gte: 2 }`",
                ],
            ),
            (
                "[ { event: a, sum: total } ]",
                &["3:15: `sum` needs an operator beside it, e.g. `gte: 500`"],
            ),
            (
                "[ { event: a, sum: total, gte: 5, count: { gte: 1 } } ]",
                &["3:47: `count` cannot be combined with `sum`"],
            ),
            (
                "[ { event: a, sum: t, avg: t, gte: 5 } ]",
                &[
                    "3:15: an `event` condition takes one of `sum`, `avg`, `min`, `max`; found `sum` and `avg`",
                ],
            ),
            (
                "[ { event: a, count: { gte: many, most: 1 } } ]",
                &[
                    "3:41: `gte` in `count` needs a whole number, found a string",
                    "3:47: unknown field `most`, expected one of `eq`, `ne`, `gt`, `gte`, `lt`, `lte`",
                ],
            ),
            (
                "[ { event: a, where: [ { attribute: b, eq: 1 } ] } ]",
                &[
                    "3:38: `attribute` is not allowed in an event's `where`, which filters the event's own properties: use `property`, `all`, `any` or `not`",
                ],
            ),
            (
                "[ { event: a, where: [ { not: { segment: s } } ] } ]",
                &[
                    "3:45: `segment` is not allowed in an event's `where`, which filters the event's own properties: use `property`, `all`, `any` or `not`",
                ],
            ),
            (
                "[ { all: [ { clicked: x } ] } ]",
                &[
                    "3:26: `clicked` is not allowed in `conditions`: there is no journey message yet",
                ],
            ),
            (
                "[ 5 ]",
                &[
                    "3:15: a condition is a mapping such as `{ property: total, gt: 0 }`, found a number",
                ],
            ),
            (
                "[ { property: a, eq: 1, eq: 2 } ]",
                &["3:37: duplicate key `eq` (first given on line 3)"],
            ),
        ];
        assert_cases(cases.iter().map(|(conditions, expected)| {
            let source =
                format!("trigger: {{ event: x }}\nsteps: [exit]\nconditions: {conditions}\n");
            (source, *expected)
        }));
        // `where` of the trigger and `exit_on` have no journey either.
        assert_eq!(
            errors(
                "w.yaml",
                "trigger: { event: x, where: { opened: a } }\nexit_on: [ { event: y, where: [ { clicked: a } ] } ]\nsteps: [exit]\n"
            ),
            vec![
                "w.yaml:1:31: `opened` is not allowed in the trigger's `where`: there is no journey message yet",
                "w.yaml:2:35: `clicked` is not allowed in `exit_on`: there is no journey message yet",
            ]
        );
    }

    // ---- Directories ----

    #[test]
    fn load_dir_reads_yaml_files_in_order_and_reports_duplicate_names() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"))
        };
        write("b.yml", "trigger: { event: x }\nsteps: [exit]\n");
        write(
            "a.yaml",
            "description: first\nname: same\ntrigger: { event: x }\nsteps: [exit]\n",
        );
        write(
            "c.yaml",
            "name: same\ntrigger: { event: y }\nsteps: [exit]\n",
        );
        write(
            "d.yaml",
            "trigger: { event: x }\nsteps: [ { wait: soon } ]\n",
        );
        write("notes.txt", "not a workflow");
        std::fs::create_dir(dir.path().join("nested.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let (workflows, problems) = load_dir(dir.path(), &Known::templates(&template_exists));
        let names: Vec<&str> = workflows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["same", "b"]);
        assert_eq!(workflows[0].source, dir.path().join("a.yaml"));
        let shown: Vec<String> = problems
            .iter()
            .map(|d| {
                let file = d.file.strip_prefix(dir.path()).unwrap_or(&d.file).display();
                format!("{file}:{}:{}: {}", d.line, d.column, d.message)
            })
            .collect();
        assert_eq!(
            shown,
            [
                "a.yaml:2:7: duplicate workflow name `same`: also used by c.yaml",
                "c.yaml:1:7: duplicate workflow name `same`: also used by a.yaml",
                "d.yaml:2:18: invalid duration `soon`: expected a whole number and a unit (s, m, h, d or w) with no space between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w`",
            ]
        );
        assert!(
            problems[0]
                .to_string()
                .ends_with("  2 | name: same\n    |       ^"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1]
                .to_string()
                .ends_with("  1 | name: same\n    |       ^"),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn load_dir_of_a_missing_directory_is_empty() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (workflows, problems) = load_dir(
            &dir.path().join("workflows"),
            &Known::templates(&template_exists),
        );
        assert_eq!((workflows, problems), (vec![], vec![]));
    }

    // ---- Robustness ----

    /// xorshift64*: deterministic pseudo-random numbers without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    fn check_never_panics(source: &str) {
        let lines = source.lines().count().max(1);
        if let Err(problems) = parse_workflow(
            Path::new("fuzz.yaml"),
            source,
            &Known::templates(&template_exists),
        ) {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(p.line <= lines + 1, "{p} in {source:?}");
                let _ = p.to_string();
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Bytes drawn mostly from YAML's own alphabet so that the parser gets past line 1.
        const ALPHABET: &[u8] =
            b" \n\t-:{}[],&*!|>'\"#%@`?~0123456789abcdefghijklmnopqrstuvwxyz\xc3\xa9\x00\x1b";
        for _ in 0..3_000 {
            let len = rng.below(200);
            let bytes: Vec<u8> = (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            check_never_panics(&String::from_utf8_lossy(&bytes));
        }
        // Mutations of a valid workflow reach the conversion code rather than the parser.
        let vocabulary = [
            "wait", "send", "branch", "if", "then", "else", "split", "exit", "clicked", "opened",
            "event", "property", "all", "any", "not", "in", "exists", "count", "sum", "- ", ": ",
            "{ ", " }", "[", "]", "\n", "  ", "1h", "-3d", "~", "&a ", "*a", "<<: ", "'", "9",
        ];
        let base = CART_ABANDONMENT.as_bytes();
        for _ in 0..3_000 {
            let mut text = base.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(text.len());
                let cut = rng.below(8).min(text.len() - at);
                let word = vocabulary[rng.below(vocabulary.len())].as_bytes();
                text.splice(at..at + cut, word.iter().copied());
            }
            check_never_panics(&String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep_flow = format!("steps: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        check_never_panics(&deep_flow);
        let mut deep_block = String::from("trigger: { event: x }\nsteps: [exit]\nconditions:\n");
        for depth in 1..2_000 {
            deep_block.push_str(&"  ".repeat(depth));
            deep_block.push_str("not:\n");
        }
        check_never_panics(&deep_block);
        let nested_nots = format!(
            "trigger: {{ event: x }}\nsteps: [exit]\nconditions: {}{{ segment: s }}{}\n",
            "{ not: ".repeat(25),
            " }".repeat(25)
        );
        parse_ok(&nested_nots);
    }

    #[test]
    fn aliases_and_merge_keys() {
        let w = parse_ok(
            "trigger: { event: x, where: &filter [ { property: total, gt: 0 } ] }\nexit_on: [ { event: y, where: *filter } ]\nsteps:\n  - &step { send: winback }\n  - *step\n  - { <<: *step, id: again }\n",
        );
        assert_eq!(w.exit_on[0].filter.len(), 1);
        assert_eq!(w.steps[1], send("winback"));
        assert_eq!(
            w.steps[2],
            Step {
                id: Some("again".into()),
                ..send("winback")
            }
        );
        // Errors in an aliased node point at the alias.
        assert_eq!(
            errors(
                "w.yaml",
                "x: &bad { wait: 1 hour }\ntrigger: { event: x }\nsteps: [ *bad ]\n"
            ),
            vec![
                "w.yaml:1:1: unknown field `x`, expected one of `name`, `description`, `category`, `trigger`, `conditions`, `reentry`, `exit_on`, `goal`, `quiet_hours`, `frequency_cap`, `tracking`, `transport`, `steps`",
                "w.yaml:3:10: invalid duration `1 hour`: expected a whole number and a unit (s, m, h, d or w) with no space between them, e.g. `30s`, `15m`, `1h`, `2d`, `1w`",
            ]
        );
    }

    #[test]
    fn journeys_hear_exit_and_wait_for_events_only() {
        let workflow = parse_ok(
            "trigger: { event: cart_updated }\n\
             exit_on: [{ event: order_placed }]\n\
             steps:\n\
             \x20 - wait_for: { event: email_clicked, timeout: 2d }\n\
             \x20 - send: cart-reminder\n",
        );
        let workflows = crate::workflow::Workflows::new(vec![workflow]);
        assert!(workflows.journeys_hear("order_placed"));
        assert!(workflows.journeys_hear("email_clicked"));
        // The trigger starts journeys; running journeys do not react to it.
        assert!(!workflows.journeys_hear("cart_updated"));
        assert!(!workflows.journeys_hear("page_viewed"));
    }
}
