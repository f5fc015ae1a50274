//! Test harness: a real Herald (HTTP on port 0, real SQLite file or PostgreSQL database, real
//! SMTP server) driven over HTTP with a manual clock.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use herald::app::{Application, Role};
use herald::clock::{Clock, ManualClock};
use herald::config::Settings;
use herald::core::Core;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "../support/smtp_server.rs"]
pub mod smtp_server;
pub use smtp_server::SmtpServer;

#[path = "../support/scratch_postgres.rs"]
mod scratch_postgres;
use scratch_postgres::ScratchDb;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs an async test body against PostgreSQL (several nodes sharing one database); skipped
/// when `HERALD_TEST_POSTGRES_URL` is not set.
#[macro_export]
macro_rules! postgres_only {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if std::env::var("HERALD_TEST_POSTGRES_URL").is_err() {
                    eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
                    return;
                }
                super::$name().await;
            }
        }
    };
}

/// Runs an async test body once per backend; PostgreSQL only when `HERALD_TEST_POSTGRES_URL` is set.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if std::env::var("HERALD_TEST_POSTGRES_URL").is_err() {
                    eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
                    return;
                }
                super::$name($crate::helpers::Db::Postgres).await;
            }
        }
    };
}

pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, 0)
        .single()
        .expect("valid start time")
}

/// A throwaway database: a file in the test's temp dir, or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    pg: Option<ScratchDb>,
}

impl TestDb {
    pub async fn create(db: Db, dir: &Path) -> TestDb {
        match db {
            Db::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.join("herald.db").display()),
                pg: None,
            },
            Db::Postgres => {
                let admin =
                    std::env::var("HERALD_TEST_POSTGRES_URL").expect("HERALD_TEST_POSTGRES_URL");
                let pg = ScratchDb::create(&admin).await;
                TestDb {
                    url: pg.url.clone(),
                    pg: Some(pg),
                }
            }
        }
    }

    pub async fn drop_db(&self) {
        if let Some(pg) = &self.pg {
            pg.drop_db().await;
        }
    }
}

/// Copies the repo's example workflows, segments and templates into `dir`.
pub fn copy_examples(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["workflows", "segments", "templates"] {
        copy_dir(&root.join(sub), &dir.join(sub));
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

pub fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
    std::fs::write(path, content).expect("write file");
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    pub clock: ManualClock,
    pub smtp: SmtpServer,
    pub core: Arc<Core>,
    pub base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub env: Vec<(String, String)>,
}

pub struct Options {
    pub role: Role,
    pub examples: bool,
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            role: Role::Api,
            examples: true,
            env: Vec::new(),
        }
    }
}

impl TestApp {
    /// Herald with the repo's examples, sending over SMTP to a test server; workers are driven
    /// explicitly with [`TestApp::run_due`].
    pub async fn spawn(db: Db) -> TestApp {
        Self::spawn_with(db, Options::default(), |_| {}).await
    }

    pub async fn spawn_with(db: Db, options: Options, setup: impl FnOnce(&Path)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        if options.examples {
            copy_examples(dir.path());
        }
        setup(dir.path());
        let db = TestDb::create(db, dir.path()).await;
        let smtp = SmtpServer::start().await;
        let clock = ManualClock::new(start_time());
        let mut env = vec![
            ("HERALD_DATABASE__URL".to_owned(), db.url.clone()),
            ("HERALD_SERVER__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("HERALD_SENDING__TRANSPORT".to_owned(), "smtp".to_owned()),
            (
                "HERALD_TRANSPORTS__SMTP__KIND".to_owned(),
                "smtp".to_owned(),
            ),
            ("HERALD_TRANSPORTS__SMTP__URL".to_owned(), smtp.url()),
            ("HERALD_TRANSPORTS__SMTP__POOL".to_owned(), "4".to_owned()),
            (
                "HERALD_TRACKING__SECRET".to_owned(),
                "test-secret".to_owned(),
            ),
            (
                "HERALD_DATABASE__MAX_CONNECTIONS".to_owned(),
                "8".to_owned(),
            ),
        ];
        env.extend(options.env);
        TestApp::build(dir, db, clock, smtp, env, options.role).await
    }

    async fn build(
        dir: tempfile::TempDir,
        db: TestDb,
        clock: ManualClock,
        smtp: SmtpServer,
        env: Vec<(String, String)>,
        role: Role,
    ) -> TestApp {
        let settings = Settings::load_with_env(dir.path(), None, &env).expect("settings");
        let app = Application::build(settings, dir.path(), Clock::Manual(clock.clone()), role)
            .await
            .expect("application builds");
        let base = format!("http://{}", app.addr().expect("http address"));
        let core = Arc::clone(&app.core);
        let shutdown = CancellationToken::new();
        let server = Some(tokio::spawn(app.run(shutdown.clone())));
        TestApp {
            dir,
            db,
            clock,
            smtp,
            core,
            base,
            http: reqwest::Client::new(),
            shutdown,
            server,
            env,
        }
    }

    /// Stops this instance and builds a new one on the same database, project and clock — a
    /// restart. Jobs the old instance held stay leased until their lease runs out.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let TestApp {
            dir,
            db,
            clock,
            smtp,
            env,
            ..
        } = self;
        TestApp::build(dir, db, clock, smtp, env, Role::Api).await
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub async fn finish(mut self) {
        self.stop().await;
        self.db.drop_db().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Posts every body to `path` at once, each on its own connection; answers in no order.
    pub async fn post_all_at_once(&self, path: &str, bodies: Vec<Value>) -> Vec<(u16, Value)> {
        let mut posts = tokio::task::JoinSet::new();
        for body in bodies {
            let request = reqwest::Client::new().post(self.url(path)).json(&body);
            posts.spawn(async move {
                let response = request.send().await.expect("request");
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            });
        }
        posts.join_all().await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn contact(&self, id: &str, email: &str, attributes: Value) {
        let (status, body) = self
            .post(
                "/v1/contacts",
                json!({"id": id, "email": email, "attributes": attributes}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Upserts contacts `id(i)` with address `u{i}@example.com` for `i` in `0..n`, in one
    /// batch request.
    pub async fn contacts_batch(&self, n: usize, id: impl Fn(usize) -> String) {
        let contacts: Vec<_> = (0..n)
            .map(|i| json!({"id": id(i), "email": format!("u{i}@example.com")}))
            .collect();
        let (status, body) = self
            .post("/v1/contacts/batch", json!({"contacts": contacts}))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Another Herald on this one's database, project and clock, as a second node would be,
    /// with `env` added to this one's settings. It is built, not run.
    pub async fn worker_node(&self, env: &[(&str, &str)]) -> Application {
        let mut all = self.env.clone();
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let settings = Settings::load_with_env(self.dir.path(), None, &all).expect("settings");
        Application::build(
            settings,
            self.dir.path(),
            Clock::Manual(self.clock.clone()),
            Role::Worker,
        )
        .await
        .expect("second node")
    }

    pub async fn event(&self, contact: &str, name: &str, properties: Value) -> Value {
        let (status, body) = self
            .post(
                "/v1/events",
                json!({"contact_id": contact, "name": name, "properties": properties}),
            )
            .await;
        assert!(status == 202 || status == 200, "{status} {body}");
        body
    }

    /// Runs every job due now (the workers' work, done synchronously).
    pub async fn run_due(&self) -> usize {
        herald::scheduler::run_due(&self.core)
            .await
            .expect("run due jobs")
    }

    /// Moves the clock and runs what became due.
    pub async fn advance(&self, by: TimeDelta) -> usize {
        self.clock.advance(by);
        self.run_due().await
    }

    pub async fn messages_of(&self, contact: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/contacts/{contact}")).await;
        assert_eq!(status, 200, "{body}");
        body["messages"].as_array().cloned().unwrap_or_default()
    }
}

/// Subjects of the received mail, in arrival order.
pub fn subjects(smtp: &SmtpServer) -> Vec<String> {
    smtp.messages()
        .iter()
        .map(|m| {
            mail_parser::MessageParser::default()
                .parse(&m.data)
                .and_then(|p| p.subject().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect()
}

/// `batches` orders of the indices `0..n`: ascending for even batches, descending for odd ones,
/// so that concurrent batches meet the same rows in opposite orders.
pub fn opposite_orders(n: usize, batches: usize) -> Vec<Vec<usize>> {
    (0..batches)
        .map(|b| match b % 2 {
            0 => (0..n).collect(),
            _ => (0..n).rev().collect(),
        })
        .collect()
}
