//! `herald bench send`: measures end-to-end send throughput. It owns a throwaway project (one
//! workflow that sends one transactional message per `bench_ping` event), a real Herald built
//! from it (HTTP on an ephemeral loopback port, the engine, SQLite or a given PostgreSQL
//! database, the `smtp` transport), a load generator that posts one event per contact over
//! HTTP/1.1, and the figures it prints: messages/s, Herald's CPU µs per message, peak RSS and
//! the ingest-only rate. Mail only ever goes to an SMTP sink on a loopback address.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::{Application, Role};
use crate::clock::Clock;
use crate::config::Settings;
use crate::store::Store;

use super::poster::Poster;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// N contacts each post one event that triggers one immediate send, end to end through the
    /// HTTP API, the engine and the database into an SMTP sink on loopback.
    Send(SendArgs),
    /// N contacts with birthdays over the year: the cost of scheduling them all, and of one
    /// day's firing on a manual clock.
    Dates(super::bench_dates::Args),
    /// Signed SendGrid webhook batches and open-pixel hits into a real Herald.
    Webhooks(super::bench_feedback::Args),
    /// Messages per second through one transport: a REST provider stand-in or an SMTP relay.
    Transport(super::bench_transport::Args),
    /// A synthetic store (contacts, two years of events) with the example segments: full
    /// recompute, incremental cost per event, hourly sweeps, peak RSS.
    Segments(super::bench_segments::Args),
    /// 1, 2, 3… `herald serve --role worker` processes on one PostgreSQL draining the same
    /// queue of journeys into an SMTP sink on loopback: messages/s per node count.
    Cluster(super::bench_cluster::Args),
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Messages to send (one contact and one event each).
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// The SMTP sink, e.g. `smtp-sink -c 127.0.0.1:2525 1000`; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp: String,
    /// SMTP connection pool size (`transports.<name>.pool`).
    #[arg(long, default_value_t = 16)]
    pool: usize,
    /// Concurrent HTTP clients posting events.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Journey steps run at once (`workers.concurrency`); default Herald's own.
    #[arg(long)]
    workers: Option<usize>,
    /// `sqlite` (a fresh file in a temp directory) or a database URL. A PostgreSQL database
    /// should be a scratch one: the run leaves its contacts, journeys and messages in it.
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// Give up when the messages are not all sent after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

pub(super) const WORKFLOW: &str = "name: bench\n\
category: transactional\n\
trigger:\n  event: bench_ping\n\
steps:\n  - send: bench\n";

pub(super) const TEMPLATE: &str = "---\n\
subject: 'Benchmark message for {{contact.first_name}}'\n\
sample: { contact: { first_name: Ada } }\n\
---\n\
<h1>Hello {{contact.first_name}}</h1>\n\
<p>This message was sent by <code>herald bench</code> to a local SMTP sink.</p>\n\
<p>Nothing to do here: it is one of many identical messages.</p>\n";

/// Contacts per `/v1/contacts/batch` request while setting up.
pub(super) const CONTACT_CHUNK: usize = 1000;
/// How often, at most, the database is asked how many messages are sent.
pub(super) const POLL: Duration = Duration::from_millis(20);

/// When to ask again how many messages are sent, `done` of them since `elapsed` began and
/// `remaining` to go: after a quarter of the time the rest should take at the rate so far,
/// between [`POLL`] and ten times that. Each count reads the whole message index, so counting
/// every `POLL` while thousands are still to go was a few percent of the CPU the bench reports
/// as Herald's; near the end (and before anything is sent, when a count is cheap) it still
/// looks every `POLL`, so the measured time stays as precise.
pub(super) fn next_poll(done: i64, remaining: i64, elapsed: Duration) -> Duration {
    if done <= 0 || remaining <= 0 {
        return POLL;
    }
    let rest = elapsed.mul_f64(remaining as f64 / done as f64);
    (rest / 4).clamp(POLL, POLL * 10)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Send(a) => send(a).await,
        What::Dates(a) => super::bench_dates::run(a).await,
        What::Transport(a) => super::bench_transport::run(a).await,
        What::Webhooks(a) => super::bench_feedback::run(a).await,
        What::Segments(a) => super::bench_segments::run(a).await,
        What::Cluster(a) => super::bench_cluster::run(a).await,
    }
}

async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    if args.messages == 0 || args.pool == 0 || args.concurrency == 0 {
        bail!("--messages, --pool and --concurrency must be at least 1");
    }
    let smtp = loopback_sink(&args.smtp)?;
    check_sink(smtp)?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let project = ScratchDir::create(
        &format!("send-{run_id}"),
        &[
            ("workflows/bench.yaml", WORKFLOW),
            ("templates/bench.hbs", TEMPLATE),
        ],
    )?;
    let database_url = if args.database == "sqlite" {
        format!("sqlite://{}", project.path().join("bench.db").display())
    } else {
        args.database.clone()
    };
    let env = sending_env(database_url, smtp, args.pool, args.workers, &run_id);
    let settings = Settings::load_with_env(project.path(), None, &env)?;
    let workers = settings.workers.concurrency;
    let app = Application::build(settings, project.path(), Clock::System, Role::All)
        .await
        .context("cannot start Herald")?;
    let addr = app
        .addr()
        .ok_or_else(|| anyhow!("Herald did not bind an HTTP address"))?;
    let core = Arc::clone(&app.core);
    let backend = core.store.backend();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));

    let result = measure(&args, addr, &core.store, &run_id).await;

    shutdown.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "Herald stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "Herald's task failed"),
    }
    drop(core);
    drop(project);
    let figures = result?;
    println!("herald bench send");
    println!("database            {backend:?}");
    println!("smtp sink           {smtp}");
    println!(
        "pool / workers      {} SMTP connections, {workers} workers, {} HTTP clients",
        args.pool, args.concurrency
    );
    figures.print();
    Ok(ExitCode::SUCCESS)
}

/// The settings of a sending bench, as `HERALD_*` variables: the database, an ephemeral
/// loopback HTTP port, the SMTP sink as the default transport (`bench`, plaintext) with `pool`
/// connections, `workers` journey steps at once (else Herald's default), and a fixed tracking
/// secret.
pub(super) fn sending_env(
    database_url: String,
    smtp: SocketAddr,
    pool: usize,
    workers: Option<usize>,
    run_id: &str,
) -> Vec<(String, String)> {
    let workers = workers.map(|n| ("HERALD_WORKERS__CONCURRENCY", n.max(1).to_string()));
    [
        ("HERALD_DATABASE__URL", database_url),
        ("HERALD_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("HERALD_SENDING__TRANSPORT", "bench".to_owned()),
        ("HERALD_TRANSPORTS__BENCH__KIND", "smtp".to_owned()),
        (
            "HERALD_TRANSPORTS__BENCH__URL",
            format!("smtp://{smtp}?tls=none"),
        ),
        ("HERALD_TRANSPORTS__BENCH__POOL", pool.to_string()),
        ("HERALD_TRACKING__SECRET", format!("bench-{run_id}")),
    ]
    .into_iter()
    .chain(workers)
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What one run measured.
struct Figures {
    messages: usize,
    wall: Duration,
    ingest: Duration,
    /// Whole process, user + system, during the timed phase.
    process_cpu: Duration,
    /// The load generator's share of `process_cpu`.
    client_cpu: Duration,
    /// `process_cpu` by thread name (the load generator's thread included).
    by_thread: Vec<(String, Duration)>,
    peak_rss_kib: Option<u64>,
    clock_ticks: u64,
}

impl Figures {
    fn print(&self) {
        let n = self.messages as f64;
        let herald_cpu = self.process_cpu.saturating_sub(self.client_cpu);
        println!("messages            {}", self.messages);
        println!("wall seconds        {:.3}", self.wall.as_secs_f64());
        println!(
            "messages/s          {:.0}",
            n / self.wall.as_secs_f64().max(1e-9)
        );
        println!(
            "ingest events/s     {:.0}",
            n / self.ingest.as_secs_f64().max(1e-9)
        );
        println!(
            "CPU µs/message      {:.0} (Herald; process {:.0} minus load generator {:.0}; tick {} ms)",
            herald_cpu.as_secs_f64() * 1e6 / n,
            self.process_cpu.as_secs_f64() * 1e6 / n,
            self.client_cpu.as_secs_f64() * 1e6 / n,
            1000 / self.clock_ticks.max(1),
        );
        // Where Herald's CPU went: the SQLite writer thread is the one serial stage.
        println!(
            "by thread µs/msg    {}",
            herald_threads(&self.by_thread, self.messages)
        );
        match self.peak_rss_kib {
            Some(kib) => println!(
                "peak RSS            {:.1} MiB (whole process)",
                kib as f64 / 1024.0
            ),
            None => println!("peak RSS            unknown (no /proc/self/status)"),
        }
    }
}

async fn measure(
    args: &SendArgs,
    addr: SocketAddr,
    store: &Store,
    run_id: &str,
) -> anyhow::Result<Figures> {
    let base = format!("http://{addr}");
    let n = args.messages;
    let contact_id = {
        let prefix = format!("bench-{run_id}-");
        move |i: usize| format!("{prefix}{i}")
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot build the HTTP client")?;
    for start in (0..n).step_by(CONTACT_CHUNK) {
        let contacts: Vec<Value> = (start..(start + CONTACT_CHUNK).min(n))
            .map(|i| {
                json!({
                    "id": contact_id(i),
                    "email": format!("c{i}@bench.example.com"),
                    "attributes": { "first_name": format!("Contact {i}") },
                })
            })
            .collect();
        let response = http
            .post(format!("{base}/v1/contacts/batch"))
            .json(&json!({ "contacts": contacts }))
            .send()
            .await
            .context("POST /v1/contacts/batch")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("POST /v1/contacts/batch answered {status}: {body}");
        }
    }
    drop(http);
    let before = status_counts(store).await?;
    let sent_before = before.sent;

    let clock_ticks = clock_ticks_per_second();
    let threads_start = thread_ticks();
    let cpu_start = cpu_time(Path::new("/proc/self/stat"), clock_ticks)?;
    let started = Instant::now();
    let client = spawn_load(addr, n, args.concurrency, contact_id);
    let load = client
        .await
        .map_err(|_| anyhow!("the load generator thread stopped without a report"))??;
    let ingest = started.elapsed();
    if let Some(error) = load.first_error {
        bail!(
            "{} of {n} events were not accepted; first failure: {error}",
            load.failures
        );
    }
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let counts = status_counts(store).await?;
        let bad = counts.not_sent - before.not_sent;
        if bad > 0 {
            bail!(
                "{bad} message(s) were not sent (failed, unknown or suppressed): {}",
                counts.summary
            );
        }
        if counts.sent - sent_before >= n as i64 {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "only {} of {n} messages sent after {} s: {}",
                counts.sent - sent_before,
                args.timeout,
                counts.summary
            );
        }
        let done = counts.sent - sent_before;
        tokio::time::sleep(next_poll(done, n as i64 - done, started.elapsed())).await;
    }
    let wall = started.elapsed();
    let cpu_end = cpu_time(Path::new("/proc/self/stat"), clock_ticks)?;
    let by_thread = by_thread(&threads_start, &thread_ticks(), clock_ticks);
    Ok(Figures {
        messages: n,
        wall,
        ingest,
        process_cpu: cpu_end.saturating_sub(cpu_start),
        client_cpu: load.cpu,
        by_thread,
        peak_rss_kib: peak_rss_kib(),
        clock_ticks,
    })
}

/// What the load generator did.
struct Load {
    failures: usize,
    first_error: Option<String>,
    /// CPU time of the load generator's thread.
    cpu: Duration,
}

/// Posts one `bench_ping` event per contact from `concurrency` concurrent requests, each on a
/// keep-alive connection of its own, on a thread and runtime of its own so its CPU time can be
/// told apart from Herald's.
fn spawn_load(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    contact_id: impl Fn(usize) -> String + Send + Sync + 'static,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<Load>> {
    let (report, receiver) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(LOAD_THREAD.to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the load generator's runtime")
                .and_then(|rt| rt.block_on(post_events(addr, n, concurrency, contact_id)));
            let result = result.and_then(|(failures, first_error)| {
                let ticks = clock_ticks_per_second();
                Ok(Load {
                    failures,
                    first_error,
                    cpu: cpu_time(Path::new("/proc/thread-self/stat"), ticks)?,
                })
            });
            let _ = report.send(result);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the load generator thread");
    }
    receiver
}

async fn post_events(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    contact_id: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<(usize, Option<String>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let contact_id = Arc::new(contact_id);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (next, contact_id) = (Arc::clone(&next), Arc::clone(&contact_id));
        tasks.spawn(async move {
            let mut poster = Poster::new(addr);
            let mut failures = 0;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let body = json!({ "contact_id": contact_id(i), "name": "bench_ping" });
                let error = match poster.post("/v1/events", body.to_string().as_bytes()).await {
                    Ok(answer) if (200..300).contains(&answer.status) => None,
                    Ok(answer) => Some(format!(
                        "{}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    )),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = error {
                    failures += 1;
                    first_error.get_or_insert(e);
                }
            }
            (failures, first_error)
        });
    }
    let mut failures = 0;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let (f, e) = done.context("a load generator task panicked")?;
        failures += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    Ok((failures, first_error))
}

pub(super) struct Counts {
    pub(super) sent: i64,
    /// Failed, unknown or suppressed: final states other than `sent`.
    pub(super) not_sent: i64,
    pub(super) summary: String,
}

pub(super) async fn status_counts(store: &Store) -> anyhow::Result<Counts> {
    let mut tx = store.read().await?;
    let rows = tx.message_status_counts().await?;
    tx.commit().await?;
    let count = |wanted: &[&str]| -> i64 {
        rows.iter()
            .filter(|(s, _)| wanted.contains(&s.as_str()))
            .map(|(_, n)| n)
            .sum()
    };
    Ok(Counts {
        sent: count(&["sent"]),
        not_sent: count(&["failed", "unknown", "suppressed"]),
        summary: rows
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Parses `--smtp` and refuses anything but a loopback address: the bench sends thousands of
/// messages and must never reach a real mail server.
pub(super) fn loopback_sink(raw: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = raw.parse().map_err(|_| {
        anyhow!("--smtp `{raw}`: expected IP:PORT on loopback, e.g. 127.0.0.1:2525 or [::1]:2525")
    })?;
    if !addr.ip().is_loopback() {
        bail!(
            "--smtp `{raw}`: the bench only sends to a sink on a loopback address (127.0.0.0/8 or ::1)"
        );
    }
    Ok(addr)
}

pub(super) fn check_sink(addr: SocketAddr) -> anyhow::Result<()> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
        anyhow!(
            "no SMTP sink answers on {addr} ({e}); start one, e.g. `smtp-sink -c {addr} 1000 &` \
             (Debian package postfix)"
        )
    })?;
    Ok(())
}

/// A throwaway project directory under the system temp dir (`workflows/`, `segments/`,
/// `templates/` and the given files), removed when dropped. Shared by every `herald bench` command.
pub(super) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(super) fn create(name: &str, files: &[(&str, &str)]) -> anyhow::Result<ScratchDir> {
        let dir = ScratchDir(std::env::temp_dir().join(format!("herald-bench-{name}")));
        for sub in ["workflows", "segments", "templates"] {
            let path = dir.0.join(sub);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        for (rel, content) in files {
            let file = dir.0.join(rel);
            std::fs::write(&file, content)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        Ok(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// `sysconf(_SC_CLK_TCK)` without libc: asks `getconf CLK_TCK`, falling back to 100, the value
/// on every mainstream Linux architecture.
pub(super) fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// User + system CPU time from a `/proc/…/stat` file (fields 14 and 15, in clock ticks). For
/// `/proc/self/stat` that is every thread of the process; for `/proc/thread-self/stat`, the
/// calling thread.
pub(super) fn cpu_time(stat: &Path, ticks_per_second: u64) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(stat)
        .with_context(|| format!("cannot read {} (Linux only)", stat.display()))?;
    parse_cpu_ticks(&text)
        .map(|ticks| Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64))
        .ok_or_else(|| anyhow!("cannot parse {}", stat.display()))
}

pub(super) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// The name of a bench's load generator thread, whose CPU is not Herald's.
pub(super) const LOAD_THREAD: &str = "bench-load";

/// Herald's threads' CPU per item, `name µs, …`, from a [`by_thread`] breakdown.
pub(super) fn herald_threads(by_thread: &[(String, Duration)], items: usize) -> String {
    by_thread
        .iter()
        .filter(|(name, _)| name != LOAD_THREAD)
        .map(|(name, cpu)| {
            let micros = cpu.as_secs_f64() * 1e6 / items.max(1) as f64;
            format!("{name} {micros:.1}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every live thread of the process: id, name and CPU clock ticks so far.
pub(super) fn thread_ticks() -> Vec<(String, String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let name = stat.split_once('(')?.1.rsplit_once(')')?.0.to_owned();
            let tid = task.file_name().to_string_lossy().into_owned();
            Some((tid, name, parse_cpu_ticks(&stat)?))
        })
        .collect()
}

/// CPU time between two [`thread_ticks`] snapshots, summed by thread name, largest first.
/// Threads that ended in between are missing: this is a breakdown, not a total.
pub(super) fn by_thread(
    before: &[(String, String, u64)],
    after: &[(String, String, u64)],
    ticks_per_second: u64,
) -> Vec<(String, Duration)> {
    let mut sums: Vec<(String, u64)> = Vec::new();
    for (tid, name, end) in after {
        let start = before
            .iter()
            .find(|(t, n, _)| t == tid && n == name)
            .map_or(0, |b| b.2);
        let spent = end.saturating_sub(start);
        match sums.iter_mut().find(|(n, _)| n == name) {
            Some((_, sum)) => *sum += spent,
            None => sums.push((name.clone(), spent)),
        }
    }
    sums.retain(|(_, t)| *t > 0);
    sums.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    sums.into_iter()
        .map(|(n, t)| {
            let secs = t as f64 / ticks_per_second.max(1) as f64;
            (n, Duration::from_secs_f64(secs))
        })
        .collect()
}

/// Peak resident set size (`VmHWM`) in KiB.
pub(super) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_sinks_are_accepted() {
        assert!(loopback_sink("127.0.0.1:2525").is_ok());
        assert!(loopback_sink("127.8.0.1:25").is_ok());
        assert!(loopback_sink("[::1]:2525").is_ok());
        assert!(loopback_sink("10.0.0.1:25").is_err());
        assert!(loopback_sink("[2001:db8::1]:25").is_err());
        assert!(loopback_sink("mail.example.com:25").is_err());
        assert!(loopback_sink("127.0.0.1").is_err());
    }

    #[test]
    fn counts_come_less_often_while_much_is_left_and_every_poll_near_the_end() {
        let second = Duration::from_secs(1);
        // 1,000 sent in a second, 9,000 to go: about 9 s left, so look in 200 ms (the cap).
        assert_eq!(next_poll(1000, 9000, second), POLL * 10);
        // 1,000 to go at 10,000 a second: 100 ms left, so look in 25 ms.
        assert_eq!(next_poll(10_000, 1000, second), Duration::from_millis(25));
        // 100 to go: 10 ms left, but never sooner than POLL.
        assert_eq!(next_poll(10_000, 100, second), POLL);
        // Nothing sent yet (no rate) or nothing left: POLL.
        assert_eq!(next_poll(0, 5000, second), POLL);
        assert_eq!(next_poll(5000, 0, second), POLL);
    }

    #[test]
    fn cpu_ticks_come_from_fields_14_and_15() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 \
                    8 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn thread_breakdowns_sum_by_name_and_leave_out_the_load_generator() {
        let before = [
            ("1".to_owned(), "herald-writer".to_owned(), 100),
            ("2".to_owned(), "tokio-rt-worker".to_owned(), 10),
            ("4".to_owned(), LOAD_THREAD.to_owned(), 0),
        ];
        let after = [
            ("1".to_owned(), "herald-writer".to_owned(), 300),
            ("2".to_owned(), "tokio-rt-worker".to_owned(), 60),
            // Started after the first snapshot: all of its time counts.
            ("3".to_owned(), "tokio-rt-worker".to_owned(), 50),
            ("4".to_owned(), LOAD_THREAD.to_owned(), 40),
        ];
        let threads = by_thread(&before, &after, 100);
        assert_eq!(
            threads[0],
            ("herald-writer".to_owned(), Duration::from_secs(2))
        );
        assert_eq!(
            threads[1],
            ("tokio-rt-worker".to_owned(), Duration::from_secs(1))
        );
        assert_eq!(
            herald_threads(&threads, 1000),
            "herald-writer 2000.0, tokio-rt-worker 1000.0"
        );
    }
}
