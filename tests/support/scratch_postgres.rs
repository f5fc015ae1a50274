//! A throwaway PostgreSQL database for a test: created on the server of an admin URL (the
//! tests use `HERALD_TEST_POSTGRES_URL`) under a fresh `herald_test_<uuid>` name, and dropped
//! with `WITH (FORCE)` so connections a test left open do not keep it alive.
#![allow(dead_code)]

use sqlx::Connection;

pub struct ScratchDb {
    /// The new database's URL.
    pub url: String,
    admin: String,
    name: String,
}

impl ScratchDb {
    pub async fn create(admin: &str) -> ScratchDb {
        let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let (base, _) = admin.rsplit_once('/').expect("database url has a path");
        ScratchDb {
            url: format!("{base}/{name}"),
            admin: admin.to_owned(),
            name,
        }
    }

    /// Drops the database; a failure is only reported (the test's verdict is elsewhere).
    pub async fn drop_db(&self) {
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await
                .map(|_| ())
        };
        if let Err(e) = dropped.await {
            eprintln!("warning: cannot drop test database {}: {e}", self.name);
        }
    }
}
