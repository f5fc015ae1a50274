//! Chaos test for several Herald nodes on one PostgreSQL: three real `herald serve` processes
//! share a throwaway database and send into one in-process SMTP sink; 5,000 journeys (send,
//! wait 2 s, send) are ingested across the nodes, node 2 is killed with SIGKILL while it has
//! sends in flight and is started again, and once all work is over the test checks what
//! reached the sink against the database: nothing sent twice, nothing lost, and no more
//! messages of unknown fate than the killed node had in flight.
//!
//! Real processes and a real crash need wall-clock time, so the test waits (bounded) for the
//! cluster to go quiet by polling the database, and asserts on outcomes, never on timing.
//! Runs when `HERALD_TEST_POSTGRES_URL` is set; without it, it is skipped locally and fails
//! under `CI`, which always sets it.

#[path = "support/scratch_postgres.rs"]
mod scratch_postgres;
#[path = "support/smtp_server.rs"]
mod smtp_server;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use scratch_postgres::ScratchDb;
use serde_json::{Value, json};
use smtp_server::SmtpServer;
use sqlx::PgPool;

const JOURNEYS: usize = 5_000;
/// Each journey sends two messages.
const MESSAGES: usize = 2 * JOURNEYS;
/// Contacts or events per batch request.
const BATCH: usize = 250;
/// `workers.concurrency` of every node: the most sends a node can have in flight, hence the
/// most messages a SIGKILL can leave with an unknown fate.
const CONCURRENCY: usize = 16;
/// `workers.lease`: short, so the killed node's jobs come back within seconds.
const LEASE: &str = "3s";
/// Node 2 is killed once the sink has this many messages, so it dies mid-stream.
const KILL_AT: usize = MESSAGES * 3 / 10;
/// Bound on the run from the start of ingestion to the end of all work; only reached when
/// something is broken.
const PATIENCE: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(200);

// Plain literals (no `\` line continuations, which would eat the YAML's indentation).
const WORKFLOW: &str = "name: chaos
category: transactional
trigger:
  event: chaos_start
steps:
  - id: first
    send: chaos-a
  - wait: 2s
  - id: second
    send: chaos-b
";

const TEMPLATE_A: &str = "---
subject: 'First message for {{contact.first_name}}'
sample: { contact: { first_name: Ada } }
---
<p>Hello {{contact.first_name}}, this is the first of two messages.</p>
";

const TEMPLATE_B: &str = "---
subject: 'Second message for {{contact.first_name}}'
sample: { contact: { first_name: Ada } }
---
<p>Hello again {{contact.first_name}}, this is the second message.</p>
";

/// The PostgreSQL server to use, or `None` when the test is skipped.
fn postgres_url() -> Option<String> {
    match std::env::var("HERALD_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("HERALD_TEST_POSTGRES_URL is not set, but CI always sets it")
        }
        Err(_) => {
            eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_sends_nothing_twice() {
    let Some(admin) = postgres_url() else {
        return;
    };
    let db = ScratchDb::create(&admin).await;
    // The body runs in its own task so that a failed assertion still gets here and drops the
    // database (the nodes' guards kill the processes as the panic unwinds).
    let outcome = tokio::spawn(chaos(db.url.clone())).await;
    db.drop_db().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test body did not finish: {e}"),
        }
    }
}

async fn chaos(database_url: String) {
    let smtp = SmtpServer::start().await;
    let project = tempfile::tempdir().expect("tempdir");
    write_project(project.path(), &database_url, &smtp.url());
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");

    let started = Instant::now();
    // All three start at once: migrations and definition syncs race on an empty database,
    // as they would when a cluster is deployed.
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::start(i, project.path(), free_port()))
        .collect();
    for node in &mut nodes {
        node.wait_healthy(&http).await;
    }

    let bases: Vec<String> = nodes.iter().map(Node::base).collect();
    let ingest = tokio::spawn(ingest(http.clone(), bases));

    let deadline = Instant::now() + PATIENCE;
    let sink = &smtp;
    wait_until(&mut nodes, deadline, || async move {
        let n = sink.received();
        (n < KILL_AT).then(|| format!("only {n} of {MESSAGES} messages reached the sink"))
    })
    .await;
    let at_kill = smtp.received();
    let killed_at = started.elapsed();
    nodes[1].kill();
    // Whatever the dead node marked `sending` is committed by now (PostgreSQL finishes what a
    // client sent before its socket closed); the live nodes' sends of the moment are in this
    // set too, which only widens it. A message may end `unknown` only if it is in here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = PgPool::connect(&database_url)
        .await
        .expect("connect to the test database");
    let sending: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM messages WHERE status = 'sending'")
            .fetch_all(&db)
            .await
            .expect("messages in `sending`");
    let sending: HashSet<String> = sending.into_iter().map(|(id,)| id).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[1].restart();
    nodes[1].wait_healthy(&http).await;

    let running = &ingest;
    wait_until(&mut nodes, deadline, || async move {
        (!running.is_finished()).then(|| "ingestion did not finish".to_owned())
    })
    .await;
    let ingested = ingest.await.expect("the ingestion task panicked");
    let ingested_at = ingested.finished.duration_since(started);
    let pool = &db;
    wait_until(&mut nodes, deadline, || async move {
        let (journeys, active, open) = progress(pool).await;
        let done = journeys == JOURNEYS as i64 && active == 0 && open == 0;
        (!done).then(|| {
            format!(
                "work still open: {journeys} journeys, {active} active, {open} open jobs, \
                 {} messages at the sink",
                sink.received()
            )
        })
    })
    .await;
    let quiet_at = started.elapsed();

    for node in &mut nodes {
        let status = node.stop().await;
        println!("node {} stopped: {status}", node.index);
    }
    let report = check(&db, &smtp, &sending).await;
    db.close().await;
    println!(
        "cluster chaos: {JOURNEYS} journeys, {} batch requests ({} retried on another node), \
         ingested by {:.1} s; node 2 killed at {:.1} s with {at_kill} messages at the sink and \
         {} in `sending` cluster-wide; all work done at {:.1} s: {} sent, {} unknown, {} arrived \
         at the sink, none twice; slowest send {:.2} s (lease {LEASE})",
        ingested.requests,
        ingested.retried,
        ingested_at.as_secs_f64(),
        killed_at.as_secs_f64(),
        sending.len(),
        quiet_at.as_secs_f64(),
        report.sent,
        report.unknown,
        report.arrived,
        report.slowest,
    );
}

fn write_project(dir: &Path, database_url: &str, smtp_url: &str) {
    let files = [
        ("workflows/chaos.yaml", WORKFLOW.to_owned()),
        ("templates/chaos-a.hbs", TEMPLATE_A.to_owned()),
        ("templates/chaos-b.hbs", TEMPLATE_B.to_owned()),
        (
            "herald.toml",
            format!(
                "[database]\n\
                 url = \"{database_url}\"\n\
                 \n\
                 [sending]\n\
                 from = \"Chaos <chaos@herald.test>\"\n\
                 transport = \"smtp\"\n\
                 \n\
                 [transports.smtp]\n\
                 kind = \"smtp\"\n\
                 url = \"{smtp_url}\"\n\
                 pool = 8\n\
                 \n\
                 [workers]\n\
                 concurrency = {CONCURRENCY}\n\
                 lease = \"{LEASE}\"\n\
                 poll_interval = \"1s\"\n"
            ),
        ),
    ];
    for sub in ["workflows", "templates", "segments"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create project dir");
    }
    for (rel, content) in files {
        std::fs::write(dir.join(rel), content).expect("write project file");
    }
}

/// A loopback port that was free a moment ago (bound, then released for the node to take).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// One `herald serve` process. Dropping it kills the process, so a failed assertion leaves
/// nothing running.
struct Node {
    index: usize,
    dir: PathBuf,
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Node {
    fn start(index: usize, dir: &Path, port: u16) -> Node {
        let log = dir.join(format!("node-{index}.log"));
        let child = spawn(dir, port, &log);
        Node {
            index,
            dir: dir.to_path_buf(),
            port,
            log,
            child,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (`Child::kill`): no shutdown code runs, leases stay taken until they expire.
    fn kill(&mut self) {
        self.child.kill().expect("kill the node");
        self.child.wait().expect("reap the killed node");
    }

    /// Starts the node again with the same configuration and port.
    fn restart(&mut self) {
        self.child = spawn(&self.dir, self.port, &self.log);
    }

    async fn wait_healthy(&mut self, http: &reqwest::Client) {
        let url = format!("{}/healthz", self.base());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("node status") {
                panic!(
                    "node {} exited before answering /healthz ({status})\n{}",
                    self.index,
                    tail(&self.log)
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not answer /healthz in 60 s\n{}",
                self.index,
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the graceful shutdown (SIGKILL if it takes over a minute). The
    /// wait must not block the runtime: the sink's sessions run on it, and a node stopping
    /// waits for their answer to its QUIT.
    async fn stop(&mut self) -> ExitStatus {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(signalled.success(), "kill -TERM node {}", self.index);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("node status") {
                return status;
            }
            if Instant::now() >= deadline {
                eprintln!("node {} ignored SIGTERM for 60 s; killing it", self.index);
                self.kill();
                return self.child.wait().expect("reap the node");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(dir: &Path, port: u16, log: &Path) -> Child {
    // Appended to, so a restarted node's log follows its first life's.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the node's log");
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--dir")
        .arg(dir)
        .args(["serve", "--role", "all"])
        .env("HERALD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        // sqlx's slow-statement warnings quote whole statements; they would drown the rest.
        .env("RUST_LOG", "warn,sqlx=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start herald serve")
}

/// Fails the test when a node that nobody killed has exited.
fn check_alive(nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        if let Some(status) = node.child.try_wait().expect("node status") {
            panic!(
                "node {} exited on its own ({status})\n{}",
                node.index,
                tail(&node.log)
            );
        }
    }
}

/// Polls `pending` until it answers `None`; fails the test with its last answer and the nodes'
/// logs at `deadline`, or at once when a node that nobody killed has exited.
async fn wait_until<F, Fut>(nodes: &mut [Node], deadline: Instant, mut pending: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    while let Some(state) = pending().await {
        assert!(
            Instant::now() < deadline,
            "{state} after {} s\n{}",
            PATIENCE.as_secs(),
            logs(nodes)
        );
        check_alive(nodes);
        tokio::time::sleep(POLL).await;
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(40);
    format!("--- {} ---\n{}", log.display(), lines[start..].join("\n"))
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| tail(&n.log))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What ingestion took.
struct Ingested {
    /// When the last batch was accepted.
    finished: Instant,
    requests: usize,
    /// Batches that failed on their node (killed mid-request) and were posted to another.
    retried: usize,
}

/// Posts the contacts, then one `chaos_start` event each, in batches spread over the nodes.
/// A batch whose node does not answer goes to the next node; events carry ids, so a batch that
/// was stored before its node died is not stored twice.
async fn ingest(http: reqwest::Client, bases: Vec<String>) -> Ingested {
    let mut requests = 0;
    let mut retried = 0;
    for (path, key) in [("contacts", "contacts"), ("events", "events")] {
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..bases.len() {
            let (http, bases) = (http.clone(), bases.clone());
            lanes.spawn(async move {
                let mut requests = 0;
                let mut retried = 0;
                let batches = (0..JOURNEYS).step_by(BATCH).skip(lane).step_by(bases.len());
                for start in batches {
                    let items: Vec<Value> = (start..(start + BATCH).min(JOURNEYS))
                        .map(|i| item(key, i))
                        .collect();
                    let body = json!({ key: items });
                    let mut attempt = 0;
                    loop {
                        let base = &bases[(lane + attempt) % bases.len()];
                        requests += 1;
                        match post(&http, &format!("{base}/v1/{path}/batch"), &body).await {
                            Ok(()) => break,
                            Err(e) => {
                                attempt += 1;
                                retried += 1;
                                assert!(attempt < 30, "POST /v1/{path}/batch keeps failing: {e}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                }
                (requests, retried)
            });
        }
        while let Some(lane) = lanes.join_next().await {
            let (r, t) = lane.expect("an ingestion lane panicked");
            requests += r;
            retried += t;
        }
    }
    Ingested {
        finished: Instant::now(),
        requests,
        retried,
    }
}

fn item(kind: &str, i: usize) -> Value {
    if kind == "contacts" {
        json!({
            "id": format!("contact-{i}"),
            "email": format!("c{i}@chaos.example"),
            "attributes": { "first_name": format!("Contact {i}") },
        })
    } else {
        json!({ "id": format!("start-{i}"), "contact_id": format!("contact-{i}"), "name": "chaos_start" })
    }
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<(), String> {
    let response = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            response.text().await.unwrap_or_default()
        ))
    }
}

/// Journeys, active journeys, and open (queued or running) journey jobs.
async fn progress(db: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM journeys),
                (SELECT COUNT(*) FROM journeys WHERE status = 'active'),
                (SELECT COUNT(*) FROM jobs
                  WHERE journey_id IS NOT NULL AND status IN ('queued', 'running'))",
    )
    .fetch_one(db)
    .await
    .expect("progress query")
}

struct Report {
    sent: usize,
    unknown: usize,
    arrived: usize,
    /// The longest time from a message row's creation to its receipt: how close a send came
    /// to the lease (nothing renews a journey job's lease while it sends).
    slowest: f64,
}

/// Compares the sink with the database and asserts the cluster's guarantees.
/// `sending` holds the messages that were `sending` just after the kill.
async fn check(db: &PgPool, smtp: &SmtpServer, sending: &HashSet<String>) -> Report {
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    let received = smtp.messages();
    for mail in &received {
        let parsed = mail_parser::MessageParser::default()
            .parse(&mail.data)
            .expect("the sink received a parseable message");
        let header = parsed.message_id().expect("every message has a Message-ID");
        // `<{messages.id}@{sender domain}>`; mail-parser strips the angle brackets.
        let id = header.split_once('@').map_or(header, |(id, _)| id);
        *arrivals.entry(id.to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = arrivals.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "messages that arrived twice: {twice:?}");

    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, journey_id, status FROM messages")
            .fetch_all(db)
            .await
            .expect("read messages");
    let mut sent = 0;
    let mut unknown = 0;
    let mut per_journey: HashMap<&str, usize> = HashMap::new();
    for (id, journey, status) in &rows {
        let arrived = arrivals.get(id.as_str()).copied().unwrap_or(0);
        match status.as_str() {
            "sent" => {
                sent += 1;
                assert_eq!(
                    arrived, 1,
                    "message {id} is sent but arrived {arrived} times"
                );
            }
            "unknown" => {
                unknown += 1;
                assert!(
                    sending.contains(id),
                    "message {id} is unknown but was not in flight when node 2 was killed"
                );
            }
            other => panic!("message {id} ended as `{other}`"),
        }
        *per_journey.entry(journey.as_str()).or_default() += 1;
    }
    let known: HashSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    for id in arrivals.keys() {
        assert!(
            known.contains(id.as_str()),
            "the sink got message {id}, which has no row"
        );
    }

    let journeys: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM journeys")
        .fetch_all(db)
        .await
        .expect("read journeys");
    assert_eq!(journeys.len(), JOURNEYS, "one journey per contact");
    for (id, status) in &journeys {
        assert_eq!(status, "completed", "journey {id}");
        let messages = per_journey.get(id.as_str()).copied().unwrap_or(0);
        assert_eq!(messages, 2, "journey {id} has {messages} messages");
    }
    let (dead,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE status = 'dead'")
        .fetch_one(db)
        .await
        .expect("count dead jobs");
    assert_eq!(dead, 0, "dead jobs");
    assert_eq!(sent + unknown, MESSAGES, "sent + unknown");
    assert!(
        unknown <= CONCURRENCY,
        "{unknown} messages of unknown fate; the killed node had at most {CONCURRENCY} in flight"
    );
    let (slowest,): (Option<f64>,) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM MAX(updated_at - created_at))::float8 FROM messages
          WHERE status = 'sent'",
    )
    .fetch_one(db)
    .await
    .expect("slowest send");
    Report {
        sent,
        unknown,
        arrived: received.len(),
        slowest: slowest.unwrap_or_default(),
    }
}
