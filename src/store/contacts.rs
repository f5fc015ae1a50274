//! Contact rows.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::direct::{Sql, texts};
use super::{Backend, Contact, Result, Suppression, Tx};

impl Tx {
    pub async fn get_contact(&mut self, id: &str) -> Result<Option<Contact>> {
        self.optional::<Contact>(Sql::new("SELECT * FROM contacts WHERE id = $1").arg(id))
            .await
    }

    /// Serializes decisions about one contact across transactions (PostgreSQL row lock; SQLite
    /// write transactions are serialized already).
    pub async fn lock_contact(&mut self, id: &str) -> Result<()> {
        self.lock_contacts(&[id]).await
    }

    /// Locks the contact's row (PostgreSQL) and reads it as stored now, so that a decision
    /// about the contact builds on what a concurrent one committed, not on an earlier read.
    pub async fn lock_and_get_contact(&mut self, id: &str) -> Result<Option<Contact>> {
        let sql = format!("SELECT * FROM contacts WHERE id = $1{}", self.row_lock());
        self.optional::<Contact>(Sql::new(sql).arg(id)).await
    }

    /// [`Tx::lock_contact`] for several contacts, in id order so that two transactions locking
    /// overlapping sets cannot deadlock.
    pub async fn lock_contacts(&mut self, ids: &[&str]) -> Result<()> {
        if let Tx::Postgres(t) = self {
            sqlx::query("SELECT id FROM contacts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(ids)
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    }

    /// The contacts with these ids (those that exist) in id order, locked first (PostgreSQL,
    /// see [`Tx::lock_contacts`]): what is built on them is written back, and a concurrent
    /// event's update waits meanwhile instead of being overwritten.
    pub async fn lock_and_get_contacts(&mut self, ids: &[&str]) -> Result<Vec<Contact>> {
        if self.backend() == Backend::Postgres {
            // Locked and read in one statement, in id order as `lock_contacts` locks.
            let q = Sql::new("SELECT * FROM contacts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .arg(texts(ids.iter().copied()));
            return self.all(q).await;
        }
        let mut contacts = self.contacts_by_ids(ids).await?;
        contacts.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(contacts)
    }

    /// Inserts or replaces the contact row as given.
    pub async fn put_contact(&mut self, contact: &Contact) -> Result<()> {
        self.run(insert_contact_row(
            contact,
            "ON CONFLICT (id) DO UPDATE SET email = excluded.email, attributes = excluded.attributes,
               subscribed = excluded.subscribed, updated_at = excluded.updated_at",
        ))
        .await?;
        Ok(())
    }

    /// Inserts a new contact row; answers false, writing nothing, if the id exists already.
    pub async fn insert_contact(&mut self, contact: &Contact) -> Result<bool> {
        let inserted = self
            .run(insert_contact_row(contact, "ON CONFLICT (id) DO NOTHING"))
            .await?;
        Ok(inserted == 1)
    }

    pub async fn set_contact_attributes(
        &mut self,
        id: &str,
        attributes: &Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.run(
            Sql::new("UPDATE contacts SET attributes = $2, updated_at = $3 WHERE id = $1")
                .arg(id)
                .arg(Json(attributes))
                .arg(now),
        )
        .await?;
        Ok(())
    }

    /// The suppression entry for `email` (compared case-insensitively), if any.
    pub async fn suppression(&mut self, email: &str) -> Result<Option<Suppression>> {
        self.optional::<Suppression>(
            Sql::new("SELECT * FROM suppressions WHERE email = $1").arg(email.to_lowercase()),
        )
        .await
    }

    /// Removes a suppression; answers whether there was one.
    pub async fn unsuppress(&mut self, email: &str) -> Result<bool> {
        let n = self
            .run(Sql::new("DELETE FROM suppressions WHERE email = $1").arg(email.to_lowercase()))
            .await?;
        Ok(n == 1)
    }

    pub async fn suppressions(&mut self, after: &str, limit: i64) -> Result<Vec<Suppression>> {
        self.all::<Suppression>(
            Sql::new("SELECT * FROM suppressions WHERE email > $1 ORDER BY email LIMIT $2")
                .arg(after)
                .arg(limit),
        )
        .await
    }

    /// Contacts with this address (case-insensitive domain; addresses are stored with a
    /// lowercased domain).
    pub async fn contacts_by_email(&mut self, email: &str) -> Result<Vec<Contact>> {
        self.all::<Contact>(
            Sql::new("SELECT * FROM contacts WHERE lower(email) = lower($1)").arg(email),
        )
        .await
    }

    pub async fn suppress(
        &mut self,
        email: &str,
        reason: &str,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.run(
            Sql::new("INSERT INTO suppressions (email, reason, detail, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (email) DO NOTHING")
            .arg(email.to_lowercase())
            .arg(reason)
            .arg(detail)
            .arg(now),
        )
        .await?;
        Ok(())
    }
}

/// The insert of `contact`'s row, with `on_conflict` deciding what an existing id gets.
fn insert_contact_row(contact: &Contact, on_conflict: &str) -> Sql {
    Sql::new(format!(
        "INSERT INTO contacts (id, email, attributes, subscribed, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6) {on_conflict}"
    ))
    .arg(&contact.id)
    .arg(&contact.email)
    .arg(&contact.attributes)
    .arg(contact.subscribed)
    .arg(contact.created_at)
    .arg(contact.updated_at)
}
