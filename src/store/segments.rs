//! Segment membership, the per-contact instant a membership can next change, computed
//! profiles, and segment definitions as last computed.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::direct::{List, Params, Row, Sql, raw_json, texts};
use super::events::Ids;
use super::{Backend, Result, Store, Tx, on_conn};

/// One stored event as segment evaluation reads it: (contact, name, time, properties when read).
pub type FactRow = (String, String, DateTime<Utc>, Option<Json<Value>>);

/// One membership: (contact, segment, entered_at).
pub type Membership = (String, String, DateTime<Utc>);

/// What [`Tx::segment_inputs`] read.
#[derive(Debug, Default)]
pub struct SegmentInputs {
    pub facts: Vec<FactRow>,
    /// Sorted by contact, then segment.
    pub members: Vec<Membership>,
    /// Each contact's messages sent (or of unknown fate); contacts with none are absent.
    pub sends: std::collections::HashMap<String, i64>,
    /// Each contact's stored next due instant (`segment_due`); contacts with none are absent.
    pub dues: std::collections::HashMap<String, DateTime<Utc>>,
    pub meta: Option<String>,
}

/// The reads [`Tx::arms`] adds after the facts.
#[derive(Debug, Default, Clone, Copy)]
struct Extras<'a> {
    /// The contacts' memberships and due instants: what their evaluation last stored.
    stored: bool,
    sends: bool,
    meta: Option<&'a str>,
}

/// Which events of one name evaluation reads: those since `since`, with their properties or not.
#[derive(Debug, Clone, Copy)]
pub struct FactRead<'a> {
    pub name: &'a str,
    pub since: DateTime<Utc>,
    pub properties: bool,
}

/// `table` as `t`, its rows of `n` contacts bound with [`Sql::set`], up to an open `WHERE`
/// the query may go on with (`AND …`).
fn contacts_rows(p: &mut Params, n: usize, table: &str) -> String {
    format!("{table} t WHERE t.contact_id {}", p.in_set(n))
}

/// `n` contact ids, bound with [`Sql::set`], as a table `v` the query goes on to read.
fn contacts_as_v(p: &mut Params, n: usize) -> String {
    match p.backend() {
        Backend::Sqlite => format!("WITH v (id) AS (VALUES {})", p.rows(n, 1)),
        Backend::Postgres => format!("WITH v (id) AS (SELECT unnest({}::text[]))", p.one()),
    }
}

impl Tx {
    pub async fn is_member(&mut self, segment: &str, contact_id: &str) -> Result<bool> {
        let row: Option<(String,)> = self
            .optional(
                Sql::new(
                    "SELECT segment FROM segment_members WHERE segment = $1 AND contact_id = $2",
                )
                .arg(segment)
                .arg(contact_id),
            )
            .await?;
        Ok(row.is_some())
    }

    /// The contacts' current memberships: (contact, segment, entered_at).
    pub async fn memberships(&mut self, contact_ids: &[String]) -> Result<Vec<Membership>> {
        if contact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT t.contact_id, t.segment, t.entered_at FROM {}
             ORDER BY t.contact_id, t.segment",
            contacts_rows(
                &mut Params::new(self.backend()),
                contact_ids.len(),
                "segment_members"
            )
        );
        // Only placeholders are spliced in; every value is bound.
        let q = Sql::new(sql).set(self.backend(), contact_ids.iter().map(String::as_str));
        self.all(q).await
    }

    /// The contacts' stored next due instants (`segment_due`).
    pub async fn segment_dues(
        &mut self,
        contact_ids: &[String],
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>> {
        if contact_ids.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "SELECT t.contact_id, t.due_at FROM {}",
            contacts_rows(
                &mut Params::new(self.backend()),
                contact_ids.len(),
                "segment_due"
            )
        );
        let q = Sql::new(sql).set(self.backend(), contact_ids.iter().map(String::as_str));
        let rows: Vec<(String, DateTime<Utc>)> = self.all(q).await?;
        Ok(rows.into_iter().collect())
    }

    /// The contacts' events of the names in `reads`, each since its instant, oldest first per
    /// contact. Properties are read only for names that need them (NULL otherwise), which keeps
    /// high-volume events such as page views cheap.
    pub async fn facts(
        &mut self,
        contact_ids: &[String],
        reads: &[FactRead<'_>],
    ) -> Result<Vec<FactRow>> {
        if contact_ids.is_empty() || reads.is_empty() {
            return Ok(Vec::new());
        }
        match self.backend() {
            Backend::Sqlite => self.facts_by_case(contact_ids, reads).await,
            Backend::Postgres => self.facts_by_arm(contact_ids, reads).await,
        }
    }

    /// One scan of the (contact, name, time) index for all the names, each name's time bound
    /// checked by a `CASE` (SQLite's form: its recompute was measured and tuned on it).
    async fn facts_by_case(
        &mut self,
        contact_ids: &[String],
        reads: &[FactRead<'_>],
    ) -> Result<Vec<FactRow>> {
        let with_properties: Vec<&str> = reads
            .iter()
            .filter(|r| r.properties)
            .map(|r| r.name)
            .collect();
        let mut p = Params::new(self.backend());
        let props = p.list(with_properties.len().max(1));
        let ids = p.list(contact_ids.len());
        let names = p.list(reads.len());
        let since: Vec<String> = reads
            .iter()
            .map(|_| format!("WHEN {} THEN {}", p.one(), p.one()))
            .collect();
        let sql = format!(
            "SELECT contact_id, name, occurred_at, CASE WHEN name IN ({props}) THEN properties END FROM events
             WHERE contact_id IN ({ids}) AND name IN ({names}) AND occurred_at >= CASE name {} END
             ORDER BY contact_id, occurred_at",
            since.join(" ")
        );
        // Only placeholders are spliced in; every value is bound, in the order it appears.
        let mut q = Sql::new(sql);
        if with_properties.is_empty() {
            q = q.arg("");
        }
        for name in &with_properties {
            q = q.arg(*name);
        }
        for id in contact_ids {
            q = q.arg(id);
        }
        for r in reads {
            q = q.arg(r.name);
        }
        for r in reads {
            q = q.arg(r.name).arg(r.since);
        }
        self.all(q).await
    }

    /// One `UNION ALL` arm per name, so that its time bound is part of the index condition.
    /// PostgreSQL checks a bound it cannot put in the index condition only on the table row:
    /// with one `CASE` over all names it fetched every event of the names ever seen (six
    /// times the rows kept, 42 against 18 ms for 500 contacts at 200k).
    async fn facts_by_arm(
        &mut self,
        contact_ids: &[String],
        reads: &[FactRead<'_>],
    ) -> Result<Vec<FactRow>> {
        let q = self.arms(contact_ids, reads, Extras::default());
        self.all(q).await
    }

    /// Everything evaluating `contact_ids` reads besides the contacts themselves:
    /// [`Tx::facts`], [`Tx::memberships`], [`Tx::segment_dues`], with `sends` their
    /// [`Tx::sent_counts`], and with
    /// `meta` that [`Tx::meta`] value. PostgreSQL reads them all in one statement (a round trip
    /// is most of what an event costs there); rows that are not facts have no event name and
    /// carry what they are as a tagged JSON object.
    pub async fn segment_inputs(
        &mut self,
        contact_ids: &[String],
        reads: &[FactRead<'_>],
        sends: bool,
        meta: Option<&str>,
    ) -> Result<SegmentInputs> {
        let mut inputs = SegmentInputs::default();
        if self.backend() == Backend::Sqlite || contact_ids.is_empty() {
            inputs.facts = self.facts(contact_ids, reads).await?;
            inputs.members = self.memberships(contact_ids).await?;
            inputs.dues = self.segment_dues(contact_ids).await?;
            if sends {
                inputs.sends = self.sent_counts(contact_ids).await?;
            }
            if let Some(key) = meta {
                inputs.meta = self.meta(key).await?;
            }
            return Ok(inputs);
        }
        let extras = Extras {
            stored: true,
            sends,
            meta,
        };
        let q = self.arms(contact_ids, reads, extras);
        // A fact, or (no event name) a membership, a sent count or the meta value.
        type Input = (String, Option<String>, DateTime<Utc>, Option<Json<Value>>);
        let rows: Vec<Input> = self.all(q).await?;
        for (contact, name, at, value) in rows {
            let Some(name) = name else {
                let Some(Json(Value::Object(tagged))) = value else {
                    continue;
                };
                if let Some(Value::String(segment)) = tagged.get("segment") {
                    inputs.members.push((contact, segment.clone(), at));
                } else if tagged.contains_key("due") {
                    inputs.dues.insert(contact, at);
                } else if let Some(n) = tagged.get("sends").and_then(Value::as_i64) {
                    inputs.sends.insert(contact, n);
                } else if let Some(Value::String(v)) = tagged.get("meta") {
                    inputs.meta = Some(v.clone());
                }
                continue;
            };
            inputs.facts.push((contact, name, at, value));
        }
        inputs.members.sort();
        Ok(inputs)
    }

    /// One `UNION ALL` arm per name read, each with its time bound, and with `extras` one more
    /// for each extra read, their rows without an event name: (contact, NULL, entered_at,
    /// `{"segment": …}`), (contact, NULL, due_at, `{"due": true}`), (contact, NULL, epoch,
    /// `{"sends": n}`), ('', NULL, epoch, `{"meta": …}`). PostgreSQL's form: every arm reads the ids from the
    /// same parameter.
    fn arms(&self, contact_ids: &[String], reads: &[FactRead<'_>], extras: Extras<'_>) -> Sql {
        // Every arm refers to the same ids, `$1` (PostgreSQL numbers its placeholders).
        let ids_from =
            |table| contacts_rows(&mut Params::new(self.backend()), contact_ids.len(), table);
        let events = ids_from("events");
        let mut p = Params::new(self.backend());
        p.one(); // `$1`: the ids
        let mut arms: Vec<String> = reads
            .iter()
            .map(|r| {
                format!(
                    "SELECT t.contact_id, t.name, t.occurred_at, {} FROM {events}
                     AND t.name = {} AND t.occurred_at >= {}",
                    if r.properties {
                        "t.properties"
                    } else {
                        "NULL::jsonb"
                    },
                    p.one(),
                    p.one()
                )
            })
            .collect();
        if extras.stored {
            arms.push(format!(
                "SELECT t.contact_id, NULL::text, t.entered_at,
                        jsonb_build_object('segment', t.segment) FROM {}",
                ids_from("segment_members")
            ));
            arms.push(format!(
                "SELECT t.contact_id, NULL::text, t.due_at, jsonb_build_object('due', true) FROM {}",
                ids_from("segment_due")
            ));
        }
        if extras.sends {
            arms.push(format!(
                "SELECT t.contact_id, NULL::text, 'epoch'::timestamptz,
                        jsonb_build_object('sends', COUNT(*)) FROM {}
                 AND t.status IN ('sent', 'unknown') GROUP BY t.contact_id",
                ids_from("messages")
            ));
        }
        if extras.meta.is_some() {
            arms.push(format!(
                "SELECT '', NULL::text, 'epoch'::timestamptz, jsonb_build_object('meta', m.value)
                 FROM meta m WHERE m.key = {}",
                p.one()
            ));
        }
        let sql = format!("{} ORDER BY 1, 3", arms.join(" UNION ALL "));
        // Only placeholders are spliced in; every value is bound, in the order it appears.
        let mut q = Sql::new(sql).set(self.backend(), contact_ids.iter().map(String::as_str));
        for r in reads {
            q = q.arg(r.name).arg(r.since);
        }
        if let Some(key) = extras.meta {
            q = q.arg(key);
        }
        q
    }

    /// The contacts with these ids (those that exist), in one query.
    pub async fn contacts_by_ids(&mut self, ids: &[&str]) -> Result<Vec<super::Contact>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let sql = format!(
                "SELECT * FROM contacts WHERE id {}",
                Params::new(self.backend()).in_set(chunk.len())
            );
            let q = Sql::new(sql).set(self.backend(), chunk.iter().copied());
            let rows: Vec<super::Contact> = self.all(q).await?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// Adds (segment, contact) memberships entered at `now`: the statements, for
    /// [`Tx::run_all`]. Only memberships the contact does not have: every evaluation reads
    /// them with the contact locked, in the same transaction, so no check for a stored row
    /// (which costs PostgreSQL 1.6× a plain insert per row).
    pub fn add_members(&self, rows: &[(&str, &str)], now: DateTime<Utc>) -> Vec<Sql> {
        let mut writes = Vec::new();
        for chunk in rows.chunks(1000) {
            let q = match self.backend() {
                Backend::Sqlite => {
                    let sql = format!(
                        "INSERT INTO segment_members (segment, contact_id, entered_at) VALUES {}",
                        Params::new(self.backend()).rows(chunk.len(), 3)
                    );
                    let mut q = Sql::new(sql);
                    for (segment, contact) in chunk {
                        q = q.arg(*segment).arg(*contact).arg(now);
                    }
                    q
                }
                Backend::Postgres => Sql::new(
                    "INSERT INTO segment_members (segment, contact_id, entered_at)
                     SELECT s, c, $3 FROM unnest($1::text[], $2::text[]) AS v (s, c)",
                )
                .arg(texts(chunk.iter().map(|r| r.0)))
                .arg(texts(chunk.iter().map(|r| r.1)))
                .arg(now),
            };
            writes.push(q);
        }
        writes
    }

    /// Removes (segment, contact) memberships: the statements, for [`Tx::run_all`].
    pub fn remove_members(&self, rows: &[(&str, &str)]) -> Vec<Sql> {
        let delete = "DELETE FROM segment_members WHERE segment = $1 AND contact_id = $2";
        match self.backend() {
            Backend::Sqlite => rows
                .iter()
                .map(|(segment, contact)| Sql::new(delete).arg(*segment).arg(*contact))
                .collect(),
            Backend::Postgres if rows.is_empty() => Vec::new(),
            Backend::Postgres => vec![
                Sql::new(
                    "DELETE FROM segment_members m USING unnest($1::text[], $2::text[]) AS v (s, c)
                     WHERE m.segment = v.s AND m.contact_id = v.c",
                )
                .arg(texts(rows.iter().map(|r| r.0)))
                .arg(texts(rows.iter().map(|r| r.1))),
            ],
        }
    }

    /// Stores computed profiles, with each contact's order count (kept beside the profile for
    /// RFM ranking), in one statement per 1000 contacts.
    pub async fn store_profiles(&mut self, rows: &[(&str, &Value, i64)]) -> Result<()> {
        let writes = self.profile_writes(rows);
        self.run_all(writes).await
    }

    /// [`Tx::store_profiles`]' statements, for [`Tx::run_all`].
    pub fn profile_writes(&self, rows: &[(&str, &Value, i64)]) -> Vec<Sql> {
        let mut writes = Vec::new();
        for chunk in rows.chunks(1000) {
            let q = match self.backend() {
                Backend::Sqlite => {
                    let sql = format!(
                        "UPDATE contacts SET profile = v.column2, orders = v.column3
                         FROM (VALUES {}) AS v WHERE contacts.id = v.column1",
                        Params::new(self.backend()).rows(chunk.len(), 3)
                    );
                    let mut q = Sql::new(sql);
                    for (id, profile, orders) in chunk {
                        q = q.arg(*id).arg(Json(*profile)).arg(*orders);
                    }
                    q
                }
                Backend::Postgres => Sql::new(
                    "UPDATE contacts SET profile = v.profile, orders = v.orders
                     FROM unnest($1::text[], $2::jsonb[], $3::int8[]) AS v (id, profile, orders)
                     WHERE contacts.id = v.id",
                )
                .arg(texts(chunk.iter().map(|r| r.0)))
                .arg(List::Json(chunk.iter().map(|r| raw_json(r.1)).collect()))
                .arg(List::Int(chunk.iter().map(|r| r.2).collect())),
            };
            writes.push(q);
        }
        writes
    }

    /// Writes each `(id, stored, profile, orders)` only where the contact's profile is still
    /// stored as the text `stored` (read earlier, outside this transaction); returns the ids
    /// written. SQLite only, as [`Tx::purchaser_texts_after`].
    pub async fn store_profiles_where_unchanged(
        &mut self,
        rows: &[(&str, &str, &Value, i64)],
    ) -> Result<Vec<String>> {
        let mut written = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(1000) {
            let sql = format!(
                "UPDATE contacts SET profile = v.column3, orders = v.column4
                 FROM (VALUES {}) AS v
                 WHERE contacts.id = v.column1 AND contacts.profile = v.column2
                 RETURNING id",
                Params::new(self.backend()).rows(chunk.len(), 4)
            );
            let mut q = Sql::new(sql);
            for (id, stored, profile, orders) in chunk {
                q = q.arg(*id).arg(*stored).arg(Json(*profile)).arg(*orders);
            }
            let ids: Vec<(String,)> = self.all(q).await?;
            written.extend(ids.into_iter().map(|(id,)| id));
        }
        Ok(written)
    }

    /// When each contact's segments or profile next need a look without a new event (`None`:
    /// only a new event changes them).
    pub async fn set_segment_dues(&mut self, rows: &[(&str, Option<DateTime<Utc>>)]) -> Result<()> {
        let writes = self.due_writes(rows);
        self.run_all(writes).await
    }

    /// [`Tx::set_segment_dues`]' statements, for [`Tx::run_all`].
    pub fn due_writes(&self, rows: &[(&str, Option<DateTime<Utc>>)]) -> Vec<Sql> {
        let mut writes = Vec::new();
        let due: Vec<(&str, DateTime<Utc>)> = rows
            .iter()
            .filter_map(|(id, at)| at.map(|at| (*id, at)))
            .collect();
        let never: Vec<&str> = rows
            .iter()
            .filter(|(_, at)| at.is_none())
            .map(|(id, _)| *id)
            .collect();
        for chunk in due.chunks(1000) {
            let q = match self.backend() {
                Backend::Sqlite => {
                    let sql = format!(
                        "INSERT INTO segment_due (contact_id, due_at) VALUES {}
                         ON CONFLICT (contact_id) DO UPDATE SET due_at = excluded.due_at",
                        Params::new(self.backend()).rows(chunk.len(), 2)
                    );
                    let mut q = Sql::new(sql);
                    for (id, at) in chunk {
                        q = q.arg(*id).arg(*at);
                    }
                    q
                }
                Backend::Postgres => Sql::new(
                    "INSERT INTO segment_due (contact_id, due_at)
                     SELECT * FROM unnest($1::text[], $2::timestamptz[])
                     ON CONFLICT (contact_id) DO UPDATE SET due_at = excluded.due_at",
                )
                .arg(texts(chunk.iter().map(|r| r.0)))
                .arg(List::Time(chunk.iter().map(|r| r.1).collect())),
            };
            writes.push(q);
        }
        for chunk in never.chunks(1000) {
            let sql = format!(
                "DELETE FROM segment_due WHERE contact_id {}",
                Params::new(self.backend()).in_set(chunk.len())
            );
            writes.push(Sql::new(sql).set(self.backend(), chunk.iter().copied()));
        }
        writes
    }

    /// Each contact's last human engagement: the newest `email_opened` or `email_clicked`
    /// whose properties do not say `"machine": true`. Read newest first through the
    /// (contact, name, time) index, so a contact with thousands of opens costs a row or two,
    /// not all of them.
    pub async fn last_engagements(
        &mut self,
        contact_ids: &[String],
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>> {
        let mut found = std::collections::HashMap::new();
        for chunk in contact_ids.chunks(1000) {
            // A human open or click: its properties do not say `"machine": true`.
            let human = match self.backend() {
                Backend::Sqlite => "json_type(e.properties, '$.machine') IS NOT 'true'",
                Backend::Postgres => "e.properties->'machine' IS DISTINCT FROM 'true'::jsonb",
            };
            let newest = |name: &str| {
                format!(
                    "(SELECT occurred_at FROM events e WHERE e.contact_id = v.id
                      AND e.name = '{name}' AND {human} ORDER BY e.occurred_at DESC LIMIT 1)"
                )
            };
            let sql = format!(
                "{} SELECT v.id, {}, {} FROM v",
                contacts_as_v(&mut Params::new(self.backend()), chunk.len()),
                newest("email_opened"),
                newest("email_clicked"),
            );
            // (contact, last human open, last human click)
            type Newest = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
            // Only placeholders and the two constant event names are spliced in.
            let q = Sql::new(sql).set(self.backend(), chunk.iter().map(String::as_str));
            let rows: Vec<Newest> = self.all(q).await?;
            found.extend(
                rows.into_iter()
                    .filter_map(|(id, opened, clicked)| Some((id, opened.max(clicked)?))),
            );
        }
        Ok(found)
    }

    /// For each `(contact, k)`, the index of the first of the first `k` of `tiers` (lists of
    /// event names) that the contact has any event of; contacts with none are left out. Each
    /// tier is an index probe per contact, tried in order until one hits, so a contact with
    /// thousands of page views costs a probe, not a row per view.
    pub async fn first_tiers_reached(
        &mut self,
        contacts: &[(&str, usize)],
        tiers: &[&[&str]],
    ) -> Result<std::collections::HashMap<String, usize>> {
        let tiers: Vec<(usize, &&[&str])> = tiers
            .iter()
            .enumerate()
            .filter(|(_, names)| !names.is_empty())
            .collect();
        let mut found = std::collections::HashMap::new();
        if tiers.is_empty() {
            return Ok(found);
        }
        // PostgreSQL would turn a probe whose names look rare into a hashed subplan: a scan of
        // every event of those names, per statement (51 ms instead of 8 ms for 500 contacts at
        // 200k events, and growing with the table). `OFFSET 0` keeps each one a probe.
        let fence = match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " OFFSET 0",
        };
        for chunk in contacts.chunks(1000) {
            let mut p = Params::new(self.backend());
            let rows = match p.backend() {
                Backend::Sqlite => format!("WITH v (id, k) AS (VALUES {})", p.rows(chunk.len(), 2)),
                Backend::Postgres => format!(
                    "WITH v (id, k) AS (SELECT * FROM unnest({}::text[], {}::int8[]))",
                    p.one(),
                    p.one()
                ),
            };
            // `k > i` first: both engines stop at a false operand, so a tier the contact is
            // known to have reached costs no probe.
            let cases: Vec<String> = tiers
                .iter()
                .map(|(i, names)| {
                    format!(
                        "WHEN v.k > {i} AND EXISTS (SELECT 1 FROM events e WHERE e.contact_id = v.id
                           AND e.name IN ({}){fence}) THEN CAST({i} AS BIGINT)",
                        p.list(names.len())
                    )
                })
                .collect();
            // Contacts without a tier come back as NULL and are dropped here: a `WHERE` on
            // the tier would make both engines evaluate the probes twice.
            let sql = format!(
                "{rows} SELECT v.id, CASE {} END AS tier FROM v",
                cases.join(" ")
            );
            // Only placeholders and tier numbers are spliced in; every value is bound.
            let mut q = Sql::new(sql);
            let k = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            q = match self.backend() {
                Backend::Sqlite => chunk.iter().fold(q, |q, (id, n)| q.arg(*id).arg(k(*n))),
                Backend::Postgres => q
                    .arg(texts(chunk.iter().map(|(id, _)| *id)))
                    .arg(List::Int(chunk.iter().map(|(_, n)| k(*n)).collect())),
            };
            for (_, names) in &tiers {
                for name in names.iter() {
                    q = q.arg(*name);
                }
            }
            let rows: Vec<(String, Option<i64>)> = self.all(q).await?;
            found.extend(
                rows.into_iter()
                    .filter_map(|(id, tier)| Some((id, usize::try_from(tier?).ok()?))),
            );
        }
        Ok(found)
    }

    /// Messages handed to a transport, per contact, for the contacts given.
    pub async fn sent_counts(
        &mut self,
        contact_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>> {
        if contact_ids.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "SELECT t.contact_id, COUNT(*) FROM {}
             AND t.status IN ('sent', 'unknown') GROUP BY t.contact_id",
            contacts_rows(
                &mut Params::new(self.backend()),
                contact_ids.len(),
                "messages"
            )
        );
        let q = Sql::new(sql).set(self.backend(), contact_ids.iter().map(String::as_str));
        let rows: Vec<(String, i64)> = self.all(q).await?;
        Ok(rows.into_iter().collect())
    }

    /// Marks every contact who received a message since `since` and never engaged as due, so
    /// the sweep can declare them dormant after enough unanswered sends.
    pub async fn mark_unengaged_recipients_due(
        &mut self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        self.run(
            Sql::new(
                "INSERT INTO segment_due (contact_id, due_at)
                 SELECT DISTINCT m.contact_id, $2 FROM messages m
                 WHERE m.created_at >= $1 AND m.status IN ('sent', 'unknown')
                 ON CONFLICT (contact_id) DO UPDATE SET due_at = excluded.due_at",
            )
            .arg(since)
            .arg(now),
        )
        .await
    }

    /// Stores a segment's definition; true when it is new or changed. Only one of several
    /// racing nodes sees true.
    pub async fn claim_segment_spec(
        &mut self,
        segment: &str,
        spec: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = self.run(
            Sql::new("INSERT INTO segment_specs (segment, spec, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (segment) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at
                 WHERE segment_specs.spec <> excluded.spec")
            .arg(segment)
            .arg(spec)
            .arg(now),
        )
        .await?;
        Ok(n == 1)
    }

    /// Forgets segments that no longer exist, with their members. Answers whether any were.
    pub async fn retain_segment_specs(&mut self, segments: &[String]) -> Result<bool> {
        let stored: Vec<(String,)> = self
            .all(Sql::new("SELECT segment FROM segment_specs"))
            .await?;
        let mut removed = false;
        for (name,) in stored.into_iter().filter(|(n,)| !segments.contains(n)) {
            removed = true;
            on_conn!(self, c => {
                sqlx::query("DELETE FROM segment_specs WHERE segment = $1").bind(&name).execute(&mut *c).await?;
                sqlx::query("DELETE FROM segment_members WHERE segment = $1").bind(&name).execute(&mut *c).await?;
            });
        }
        Ok(removed)
    }

    pub async fn meta(&mut self, key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = self
            .optional(Sql::new("SELECT value FROM meta WHERE key = $1").arg(key))
            .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.run(
            Sql::new(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .arg(key)
            .arg(value),
        )
        .await?;
        Ok(())
    }

    /// Moves `key` from `from` (or absent) to `to`; false when another node moved it first.
    pub async fn advance_meta(&mut self, key: &str, from: Option<&str>, to: &str) -> Result<bool> {
        let n = on_conn!(self, c => {
            match from {
                Some(from) => sqlx::query("UPDATE meta SET value = $3 WHERE key = $1 AND value = $2")
                    .bind(key)
                    .bind(from)
                    .bind(to)
                    .execute(c)
                    .await?
                    .rows_affected(),
                None => sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .bind(to)
                    .execute(c)
                    .await?
                    .rows_affected(),
            }
        });
        Ok(n == 1)
    }

    /// Purchasers after `cursor` by id: (id, stored profile).
    pub async fn purchasers_after(
        &mut self,
        cursor: &str,
        limit: i64,
    ) -> Result<Vec<(String, Json<Value>)>> {
        self.purchasers_page(cursor, limit).await
    }

    /// Purchasers with ids after `from` and up to `to`, in id order, each row locked
    /// (PostgreSQL) until the transaction ends, for a profile that is written back: a
    /// concurrent event's update of it waits instead of being overwritten.
    pub async fn lock_purchasers_in(
        &mut self,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, Json<Value>)>> {
        let sql = format!(
            "SELECT id, profile FROM contacts WHERE orders > 0 AND id > $1 AND id <= $2
             ORDER BY id{}",
            self.row_lock()
        );
        self.all(Sql::new(sql).arg(from).arg(to)).await
    }

    /// [`Tx::purchasers_after`] with each profile as the text it is stored as, for
    /// [`Tx::store_profiles_where_unchanged`]. SQLite only (PostgreSQL stores `jsonb`).
    pub async fn purchaser_texts_after(
        &mut self,
        cursor: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        self.purchasers_page(cursor, limit).await
    }

    async fn purchasers_page<T: Row>(&mut self, cursor: &str, limit: i64) -> Result<Vec<T>> {
        let sql =
            "SELECT id, profile FROM contacts WHERE orders > 0 AND id > $1 ORDER BY id LIMIT $2";
        self.all(Sql::new(sql).arg(cursor).arg(limit)).await
    }
}

impl Store {
    /// Contacts whose memberships or profile are due for a look, earliest first.
    pub async fn due_segment_contacts(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<String>> {
        let mut tx = self.read().await?;
        let rows: Vec<(String,)> = on_conn!(&mut tx, c => {
            sqlx::query_as(
                "SELECT contact_id FROM segment_due WHERE due_at <= $1 ORDER BY due_at LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(c)
            .await?
        });
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Members per segment.
    pub async fn segment_sizes(&self) -> Result<Vec<(String, i64)>> {
        let mut tx = self.read().await?;
        let rows = on_conn!(&mut tx, c => {
            sqlx::query_as("SELECT segment, COUNT(*) FROM segment_members GROUP BY segment")
                .fetch_all(c)
                .await?
        });
        tx.commit().await?;
        Ok(rows)
    }

    /// A page of a segment's members after `cursor` (a contact id): (id, email, entered_at).
    pub async fn segment_members(
        &self,
        segment: &str,
        cursor: &str,
        limit: i64,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        let mut tx = self.read().await?;
        let rows = on_conn!(&mut tx, c => {
            sqlx::query_as(
                "SELECT m.contact_id, c.email, m.entered_at FROM segment_members m
                 JOIN contacts c ON c.id = m.contact_id
                 WHERE m.segment = $1 AND m.contact_id > $2 ORDER BY m.contact_id LIMIT $3",
            )
            .bind(segment)
            .bind(cursor)
            .bind(limit)
            .fetch_all(c)
            .await?
        });
        tx.commit().await?;
        Ok(rows)
    }
}

impl Tx {
    /// Stores many contacts at once (imports and benchmarks): multi-row inserts, existing ids
    /// left alone.
    pub async fn import_contacts(&mut self, contacts: &[super::Contact]) -> Result<()> {
        // 6 values a row keeps a 1000-row statement under SQLite's 32,766 bound parameters.
        for chunk in contacts.chunks(1000) {
            let sql = format!(
                "INSERT INTO contacts (id, email, attributes, subscribed, created_at, updated_at) VALUES {}
                 ON CONFLICT (id) DO NOTHING",
                Params::new(self.backend()).rows(chunk.len(), 6)
            );
            let mut q = Sql::new(sql);
            for r in chunk {
                q = q
                    .arg(&r.id)
                    .arg(&r.email)
                    .arg(&r.attributes)
                    .arg(r.subscribed)
                    .arg(r.created_at)
                    .arg(r.updated_at);
            }
            self.run(q).await?;
        }
        Ok(())
    }

    /// Stores many events at once, as they happened, without applying their effects
    /// (imports and benchmarks; a recompute brings segments up to date afterwards).
    pub async fn import_events(&mut self, events: &[super::Event]) -> Result<()> {
        let writes = self.event_imports(events, Ids::Given);
        self.run_all(writes).await
    }

    /// [`Tx::import_events`]' statements, for [`Tx::run_all`].
    pub fn event_imports(&self, events: &[super::Event], ids: Ids) -> Vec<Sql> {
        // 6 values an event keeps 1000-event statements under SQLite's bound-parameter limit.
        events
            .chunks(1000)
            .map(|chunk| self.event_insert(chunk, ids))
            .collect()
    }
}
