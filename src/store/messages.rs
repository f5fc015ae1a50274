//! Outgoing message rows and what happened to them. A message row is unique per
//! (journey, step, iteration) and is written before any transport is called.

use chrono::{DateTime, Utc};

use super::direct::Sql;
use super::{DeliveryRow, Message, MessageFacts, Result, Tx, on_conn};

impl Tx {
    /// Inserts the message unless its (journey, step, iteration) exists; returns the stored row.
    pub async fn ensure_message(&mut self, m: &Message) -> Result<Message> {
        Ok(self.insert_message(m).await?.0)
    }

    /// Inserts the message unless its (journey, step, iteration) exists; returns the stored row
    /// and whether it is the one just inserted. The insert returns the new row, so only a
    /// retried step reads the existing one.
    pub async fn insert_message(&mut self, m: &Message) -> Result<(Message, bool)> {
        let inserted = self
            .optional::<Message>(
                Sql::new(
                    "INSERT INTO messages (id, journey_id, step, iteration, contact_id, workflow,
                       template, category, to_email, subject, status, transport,
                       provider_message_id, detail, attempts, created_at, updated_at, sent_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                       $17, $18)
                     ON CONFLICT (journey_id, step, iteration) DO NOTHING
                     RETURNING *",
                )
                .arg(&m.id)
                .arg(&m.journey_id)
                .arg(&m.step)
                .arg(m.iteration)
                .arg(&m.contact_id)
                .arg(&m.workflow)
                .arg(&m.template)
                .arg(&m.category)
                .arg(&m.to_email)
                .arg(&m.subject)
                .arg(&m.status)
                .arg(&m.transport)
                .arg(&m.provider_message_id)
                .arg(&m.detail)
                .arg(m.attempts)
                .arg(m.created_at)
                .arg(m.updated_at)
                .arg(m.sent_at),
            )
            .await?;
        if let Some(row) = inserted {
            return Ok((row, true));
        }
        let existing = self
            .one(
                Sql::new(
                    "SELECT * FROM messages WHERE journey_id = $1 AND step = $2 AND iteration = $3",
                )
                .arg(&m.journey_id)
                .arg(&m.step)
                .arg(m.iteration),
            )
            .await?;
        Ok((existing, false))
    }

    /// Moves a message from status `from` to `to`, recording what is known. Answers false when
    /// the message was not in `from` (someone else moved it first).
    #[allow(clippy::too_many_arguments)]
    pub async fn transition_message(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        detail: Option<&str>,
        provider_message_id: Option<&str>,
        subject: Option<&str>,
        transport: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = self
            .run(
                Sql::new(
                    "UPDATE messages SET status = $3, detail = COALESCE($4, detail),
                   provider_message_id = COALESCE($5, provider_message_id),
                   subject = COALESCE($6, subject), transport = COALESCE($7, transport),
                   attempts = attempts + CASE WHEN $3 = 'sending' THEN 1 ELSE 0 END,
                   sent_at = CASE WHEN $3 = 'sent' THEN $8 ELSE sent_at END, updated_at = $8
                 WHERE id = $1 AND status = $2",
                )
                .arg(id)
                .arg(from)
                .arg(to)
                .arg(detail)
                .arg(provider_message_id)
                .arg(subject)
                .arg(transport)
                .arg(now),
            )
            .await?;
        Ok(done == 1)
    }

    pub async fn set_message_detail(
        &mut self,
        id: &str,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.run(
            Sql::new("UPDATE messages SET detail = $2, updated_at = $3 WHERE id = $1")
                .arg(id)
                .arg(detail)
                .arg(now),
        )
        .await?;
        Ok(())
    }

    pub async fn get_message(&mut self, id: &str) -> Result<Option<Message>> {
        self.optional::<Message>(Sql::new("SELECT * FROM messages WHERE id = $1").arg(id))
            .await
    }

    /// The journey's message for `step` (latest iteration).
    pub async fn journey_message(
        &mut self,
        journey_id: &str,
        step: &str,
    ) -> Result<Option<Message>> {
        self.optional::<Message>(
            Sql::new("SELECT * FROM messages WHERE journey_id = $1 AND step = $2 ORDER BY iteration DESC LIMIT 1")
            .arg(journey_id)
            .arg(step),
        )
        .await
    }

    pub async fn contact_messages(&mut self, contact_id: &str, limit: i64) -> Result<Vec<Message>> {
        self.all::<Message>(
            Sql::new(
                "SELECT * FROM messages WHERE contact_id = $1 ORDER BY created_at DESC LIMIT $2",
            )
            .arg(contact_id)
            .arg(limit),
        )
        .await
    }

    /// Adds ledger entries whose (provider, provider_event_id) is not there yet, in one
    /// statement, and answers the ids of those it stored: the others were seen before. Keep
    /// `rows` within the bind-parameter limit (12 per row; SQLite allows 32,766).
    pub async fn insert_deliveries(&mut self, rows: &[&DeliveryRow]) -> Result<Vec<String>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let stored: Vec<(String,)> = on_conn!(self, c => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO delivery_events (id, provider, provider_event_id, message_id,
                   provider_message_id, recipient, kind, severity, detail, machine, occurred_at,
                   received_at) ",
            );
            q.push_values(rows, |mut v, e| {
                v.push_bind(&e.id)
                    .push_bind(&e.provider)
                    .push_bind(&e.provider_event_id)
                    .push_bind(&e.message_id)
                    .push_bind(&e.provider_message_id)
                    .push_bind(&e.recipient)
                    .push_bind(&e.kind)
                    .push_bind(&e.severity)
                    .push_bind(&e.detail)
                    .push_bind(e.machine)
                    .push_bind(e.occurred_at)
                    .push_bind(e.received_at);
            });
            q.push(" ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id");
            q.build_query_as().fetch_all(c).await?
        });
        Ok(stored.into_iter().map(|(id,)| id).collect())
    }

    /// What feedback needs of the messages with these ids (those that exist).
    pub async fn message_facts(&mut self, ids: &[&str]) -> Result<Vec<MessageFacts>> {
        self.message_facts_where_in("id", ids).await
    }

    /// What feedback needs of the messages providers know by these ids (those that exist).
    pub async fn message_facts_by_provider_ids(
        &mut self,
        ids: &[&str],
    ) -> Result<Vec<MessageFacts>> {
        self.message_facts_where_in("provider_message_id", ids)
            .await
    }

    /// `column` is a constant of this module, never input.
    async fn message_facts_where_in(
        &mut self,
        column: &str,
        values: &[&str],
    ) -> Result<Vec<MessageFacts>> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        Ok(on_conn!(self, c => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT m.id, m.contact_id, m.workflow, m.step, m.template, m.to_email,
                   m.provider_message_id, m.sent_at,
                   EXISTS (SELECT 1 FROM contacts c WHERE c.id = m.contact_id) AS known,
                   EXISTS (SELECT 1 FROM journeys j
                     WHERE j.contact_id = m.contact_id AND j.status = 'active') AS active_journey
                 FROM messages m WHERE m.{column} IN ("
            ));
            let mut list = q.separated(", ");
            for value in values {
                list.push_bind(*value);
            }
            q.push(")");
            q.build_query_as::<MessageFacts>().fetch_all(c).await?
        }))
    }

    /// Answers whether the message has a human (not machine) event of `kind`.
    pub async fn message_has_event(&mut self, message_id: &str, kind: &str) -> Result<bool> {
        let n: (i64,) = self.one(
            Sql::new("SELECT COUNT(*) FROM delivery_events WHERE message_id = $1 AND kind = $2 AND machine = $3")
            .arg(message_id)
            .arg(kind)
            .arg(false),
        )
        .await?;
        Ok(n.0 > 0)
    }

    /// Soft bounces of `recipient` since `since`.
    pub async fn soft_bounces_since(
        &mut self,
        recipient: &str,
        since: DateTime<Utc>,
    ) -> Result<i64> {
        let n: (i64,) = self.one(
            Sql::new("SELECT COUNT(*) FROM delivery_events
                 WHERE recipient = $1 AND kind = 'bounced' AND severity = 'soft' AND occurred_at >= $2")
            .arg(recipient)
            .arg(since),
        )
        .await?;
        Ok(n.0)
    }

    /// Clicks on a message since `since` (link scanners click every link at once).
    pub async fn clicks_since(&mut self, message_id: &str, since: DateTime<Utc>) -> Result<i64> {
        let n: (i64,) = self
            .one(
                Sql::new(
                    "SELECT COUNT(*) FROM delivery_events
                 WHERE message_id = $1 AND kind = 'clicked' AND occurred_at >= $2",
                )
                .arg(message_id)
                .arg(since),
            )
            .await?;
        Ok(n.0)
    }

    /// The delivery ledger of a message, oldest first.
    pub async fn message_deliveries(&mut self, message_id: &str) -> Result<Vec<DeliveryRow>> {
        self.all::<DeliveryRow>(
            Sql::new("SELECT * FROM delivery_events WHERE message_id = $1 ORDER BY occurred_at")
                .arg(message_id),
        )
        .await
    }

    /// Records a one-time webhook token; answers false if it was seen before (a replay).
    /// Forgets expired tokens on the way.
    pub async fn remember_replay_key(
        &mut self,
        key: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = on_conn!(self, c => {
            sqlx::query("DELETE FROM webhook_replays WHERE expires_at < $1").bind(now).execute(&mut *c).await?;
            sqlx::query("INSERT INTO webhook_replays (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(key)
                .bind(expires_at)
                .execute(&mut *c)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// When the contact's marketing mail after `since` went out (or was handed over).
    pub async fn recent_marketing_sends(
        &mut self,
        contact_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>> {
        let rows: Vec<(DateTime<Utc>,)> = self.all(
            Sql::new("SELECT COALESCE(sent_at, updated_at) FROM messages
                 WHERE contact_id = $1 AND category = 'marketing' AND status IN ('sent', 'sending', 'unknown')
                   AND COALESCE(sent_at, updated_at) > $2")
            .arg(contact_id)
            .arg(since),
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Message counts by status (for reports and tests).
    pub async fn message_status_counts(&mut self) -> Result<Vec<(String, i64)>> {
        self.all(Sql::new(
            "SELECT status, COUNT(*) FROM messages GROUP BY status ORDER BY status",
        ))
        .await
    }
}
