//! Contact rows.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Contact, Result, Suppression, Tx, on_conn};

impl Tx {
    pub async fn get_contact(&mut self, id: &str) -> Result<Option<Contact>> {
        Ok(on_conn!(self, c => {
            sqlx::query_as::<_, Contact>("SELECT * FROM contacts WHERE id = $1")
                .bind(id)
                .fetch_optional(c)
                .await?
        }))
    }

    /// Serializes decisions about one contact across transactions (PostgreSQL row lock; SQLite
    /// write transactions are serialized already).
    pub async fn lock_contact(&mut self, id: &str) -> Result<()> {
        self.lock_contacts(&[id]).await
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

    /// Inserts or replaces the contact row as given.
    pub async fn put_contact(&mut self, contact: &Contact) -> Result<()> {
        on_conn!(self, c => {
            sqlx::query(
                "INSERT INTO contacts (id, email, attributes, subscribed, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET email = excluded.email, attributes = excluded.attributes,
                   subscribed = excluded.subscribed, updated_at = excluded.updated_at",
            )
            .bind(&contact.id)
            .bind(&contact.email)
            .bind(&contact.attributes)
            .bind(contact.subscribed)
            .bind(contact.created_at)
            .bind(contact.updated_at)
            .execute(c)
            .await?;
        });
        Ok(())
    }

    pub async fn set_contact_attributes(
        &mut self,
        id: &str,
        attributes: &Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_conn!(self, c => {
            sqlx::query("UPDATE contacts SET attributes = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(Json(attributes))
                .bind(now)
                .execute(c)
                .await?;
        });
        Ok(())
    }

    /// The suppression entry for `email` (compared case-insensitively), if any.
    pub async fn suppression(&mut self, email: &str) -> Result<Option<Suppression>> {
        Ok(on_conn!(self, c => {
            sqlx::query_as::<_, Suppression>("SELECT * FROM suppressions WHERE email = $1")
                .bind(email.to_lowercase())
                .fetch_optional(c)
                .await?
        }))
    }

    /// Removes a suppression; answers whether there was one.
    pub async fn unsuppress(&mut self, email: &str) -> Result<bool> {
        let n = on_conn!(self, c => {
            sqlx::query("DELETE FROM suppressions WHERE email = $1")
                .bind(email.to_lowercase())
                .execute(c)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn suppressions(&mut self, after: &str, limit: i64) -> Result<Vec<Suppression>> {
        Ok(on_conn!(self, c => {
            sqlx::query_as::<_, Suppression>("SELECT * FROM suppressions WHERE email > $1 ORDER BY email LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(c)
                .await?
        }))
    }

    /// Contacts with this address (case-insensitive domain; addresses are stored with a
    /// lowercased domain).
    pub async fn contacts_by_email(&mut self, email: &str) -> Result<Vec<Contact>> {
        Ok(on_conn!(self, c => {
            sqlx::query_as::<_, Contact>("SELECT * FROM contacts WHERE lower(email) = lower($1)")
                .bind(email)
                .fetch_all(c)
                .await?
        }))
    }

    pub async fn suppress(
        &mut self,
        email: &str,
        reason: &str,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_conn!(self, c => {
            sqlx::query(
                "INSERT INTO suppressions (email, reason, detail, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (email) DO NOTHING",
            )
            .bind(email.to_lowercase())
            .bind(reason)
            .bind(detail)
            .bind(now)
            .execute(c)
            .await?;
        });
        Ok(())
    }
}
