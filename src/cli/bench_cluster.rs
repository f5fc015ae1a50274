//! `herald bench cluster`: how sending scales with the number of Herald nodes sharing one
//! PostgreSQL. For each node count N of `--nodes` (default 1, 2 and 3), in one run:
//!
//! 1. a fresh database on the `--database` server and a throwaway project whose one
//!    (transactional) workflow sends one message per `bench_ping` event — the workflow and
//!    template of `herald bench send`, so the figures compare;
//! 2. M journeys (`--journeys`) ingested in-process through the library, before the clock
//!    starts: contacts and events in batches, then the one-off work of a fresh database (the
//!    first segment recompute) is run so that it does not land in the measurement;
//! 3. N `herald serve --role worker` processes of this executable started together, each
//!    configured alike (its own SMTP pool and workers), and the time until all M messages are
//!    `sent`;
//! 4. the workers stopped with SIGTERM, the counts verified (exactly M messages, all `sent`,
//!    nothing failed, unknown or dead), and the database dropped.
//!
//! The clock includes the workers' start-up (connect, load the project), as a deployment would;
//! the rate after the first send is printed too. Mail only ever goes to an SMTP sink on a
//! loopback address.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value};

use super::bench::{
    CONTACT_CHUNK, ScratchDir, TEMPLATE, WORKFLOW, check_sink, clock_ticks_per_second, cpu_time,
    loopback_sink, next_poll, sending_env, status_counts,
};
use crate::app::{Application, Role};
use crate::clock::Clock;
use crate::config::Settings;
use crate::core::Core;
use crate::ingest::{ContactInput, EventInput};
use crate::store::job_status;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Node counts to measure, each on a fresh database: comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<usize>,
    /// Journeys per node count (one contact, one event and one message each).
    #[arg(long, default_value_t = 5000)]
    journeys: usize,
    /// The PostgreSQL server, as a postgres:// URL whose user may create databases. Each node
    /// count gets a database of its own there, dropped afterwards.
    #[arg(long)]
    database: String,
    /// The SMTP sink, e.g. `smtp-sink -c 127.0.0.1:2525 1000`; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp: String,
    /// SMTP connections per node (`transports.<name>.pool`).
    #[arg(long, default_value_t = 16)]
    pool: usize,
    /// Journey steps run at once per node (`workers.concurrency`); default twice the pool.
    #[arg(long)]
    workers: Option<usize>,
    /// Give up on a node count when its messages are not all sent after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// How long a worker may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.nodes.is_empty() || args.nodes.contains(&0) {
        bail!("--nodes: give one or more node counts of at least 1, e.g. 1,2,3");
    }
    if args.journeys == 0 || args.pool == 0 {
        bail!("--journeys and --pool must be at least 1");
    }
    let smtp = loopback_sink(&args.smtp)?;
    check_sink(smtp)?;
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let workers = args.workers.unwrap_or(args.pool * 2).max(1);
    let mut rows = Vec::new();
    for &nodes in &args.nodes {
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        // The name is ours (a UUID in hex), so it needs no quoting.
        let name = format!("herald_bench_{run_id}");
        let url = database_on(&args.database, &name)?;
        crate::store::create_postgres_database(&args.database, &name)
            .await
            .with_context(|| format!("cannot create database {name} on {}", args.database))?;
        let env = sending_env(url, smtp, args.pool, Some(workers), &run_id);
        let figures = measure(&args, nodes, &exe, &env, &run_id).await;
        if let Err(e) = crate::store::drop_postgres_database(&args.database, &name).await {
            eprintln!("warning: cannot drop database {name}: {e}");
        }
        rows.push((nodes, figures?));
    }
    println!("herald bench cluster");
    println!("database            PostgreSQL, a fresh database per node count");
    println!("smtp sink           {smtp}");
    println!(
        "per node            {} SMTP connections, {workers} workers",
        args.pool
    );
    println!(
        "journeys            {} (one message each), ingested before the clock starts",
        args.journeys
    );
    println!(
        "nodes  wall s  messages/s  after 1st send/s  worker CPU µs/msg  machine busy  verified"
    );
    for (nodes, f) in rows {
        let n = args.journeys as f64;
        let busy = f
            .machine_busy
            .map_or_else(|| "?".to_owned(), |b| format!("{:.0} %", b * 100.0));
        println!(
            "{nodes:>5}  {:>6.2}  {:>10.0}  {:>16.0}  {:>17.0}  {busy:>12}  {}",
            f.wall.as_secs_f64(),
            n / f.wall.as_secs_f64().max(1e-9),
            f.after_first as f64 / f.steady.as_secs_f64().max(1e-9),
            f.worker_cpu.as_secs_f64() * 1e6 / n,
            f.verified,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `server` with its database replaced by `name` (user, host, port and parameters kept).
fn database_on(server: &str, name: &str) -> anyhow::Result<String> {
    let Some((scheme, rest)) = server.split_once("://") else {
        bail!("--database `{server}`: expected a postgres:// URL");
    };
    if scheme != "postgres" && scheme != "postgresql" {
        bail!(
            "--database `{server}`: expected a postgres:// URL (the cluster bench needs PostgreSQL)"
        );
    }
    let (rest, query) = rest
        .split_once('?')
        .map_or((rest, None), |(r, q)| (r, Some(q)));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
}

/// What one node count measured.
struct Figures {
    /// From starting the workers until every message was sent.
    wall: Duration,
    /// From the first poll that saw a sent message to the end, and the messages sent in it.
    steady: Duration,
    after_first: i64,
    /// User + system CPU of all worker processes.
    worker_cpu: Duration,
    /// Share of all cores' time spent busy while the workers drained the queue (every
    /// process: workers, PostgreSQL, the sink, anything else running), when `/proc/stat` says.
    machine_busy: Option<f64>,
    verified: String,
}

async fn measure(
    args: &Args,
    nodes: usize,
    exe: &Path,
    env: &[(String, String)],
    run_id: &str,
) -> anyhow::Result<Figures> {
    let project = ScratchDir::create(
        &format!("cluster-{run_id}"),
        &[
            ("workflows/bench.yaml", WORKFLOW),
            ("templates/bench.hbs", TEMPLATE),
        ],
    )?;
    let settings = Settings::load_with_env(project.path(), None, env)?;
    // Migrates the fresh database and stores the definitions; the API and workers of this
    // process never run: it only ingests and watches.
    let app = Application::build(settings, project.path(), Clock::System, Role::Api)
        .await
        .context("cannot start Herald")?;
    let core = Arc::clone(&app.core);
    drop(app);
    let result = async {
        // A fresh database queues a segment recompute; run it now, while there are no
        // contacts, rather than in the workers' measured time.
        crate::scheduler::run_due(&core).await?;
        ingest(&core, args.journeys, run_id).await?;
        drain(args, nodes, exe, project.path(), env, &core).await
    }
    .await;
    core.shutdown().await;
    result
}

/// Stores M contacts and one `bench_ping` event each, which starts M journeys whose jobs are
/// due at once.
async fn ingest(core: &Core, journeys: usize, run_id: &str) -> anyhow::Result<()> {
    let contact_id = |i: usize| format!("bench-{run_id}-{i}");
    let mut entered = 0;
    for start in (0..journeys).step_by(CONTACT_CHUNK) {
        let range = start..(start + CONTACT_CHUNK).min(journeys);
        let contacts = range
            .clone()
            .map(|i| {
                let mut attributes = Map::new();
                attributes.insert("first_name".to_owned(), Value::from(format!("Contact {i}")));
                ContactInput {
                    id: contact_id(i),
                    email: Some(format!("c{i}@bench.example.com")),
                    attributes: Some(attributes),
                    subscribed: None,
                }
            })
            .collect();
        core.upsert_contacts(contacts)
            .await
            .context("storing contacts")?;
        let events = range
            .map(|i| EventInput {
                id: None,
                contact_id: contact_id(i),
                name: "bench_ping".to_owned(),
                properties: None,
                timestamp: None,
            })
            .collect();
        let receipts = core.ingest_events(events).await.context("storing events")?;
        entered += receipts
            .iter()
            .map(|r| r.effects.entered.len())
            .sum::<usize>();
    }
    if entered != journeys {
        bail!("{journeys} events started {entered} journeys");
    }
    Ok(())
}

/// Starts the workers, waits until every message is sent, stops them, and checks the counts.
async fn drain(
    args: &Args,
    nodes: usize,
    exe: &Path,
    dir: &Path,
    env: &[(String, String)],
    core: &Core,
) -> anyhow::Result<Figures> {
    let expected = args.journeys as i64;
    let store = &core.store;
    let machine_before = machine_ticks();
    let started = Instant::now();
    let mut workers = Workers::start(exe, dir, env, nodes)?;
    let deadline = started + Duration::from_secs(args.timeout);
    let mut first: Option<(Instant, i64)> = None;
    loop {
        workers.check_running()?;
        let counts = status_counts(store).await?;
        if counts.not_sent > 0 {
            bail!(
                "{} message(s) were not sent (failed, unknown or suppressed): {}",
                counts.not_sent,
                counts.summary
            );
        }
        if counts.sent > 0 && first.is_none() {
            first = Some((Instant::now(), counts.sent));
        }
        if counts.sent >= expected {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "only {} of {expected} messages sent after {} s with {nodes} node(s): {}",
                counts.sent,
                args.timeout,
                counts.summary
            );
        }
        tokio::time::sleep(next_poll(
            counts.sent,
            expected - counts.sent,
            started.elapsed(),
        ))
        .await;
    }
    let wall = started.elapsed();
    let machine_busy = machine_before
        .zip(machine_ticks())
        .map(|((busy0, all0), (busy1, all1))| {
            busy1.saturating_sub(busy0) as f64 / all1.saturating_sub(all0).max(1) as f64
        });
    let (first_at, sent_at_first) = first.unwrap_or((started, 0));
    let worker_cpu = workers.cpu()?;
    workers.stop().await?;

    // Message rows are unique per journey and step, and a retry would have shown as a
    // non-`sent` status above: exactly M `sent` rows and nothing else means every journey's
    // message went out once.
    let counts = status_counts(store).await?;
    if counts.sent != expected || counts.not_sent != 0 {
        bail!(
            "expected {expected} sent messages, found {}",
            counts.summary
        );
    }
    let mut tx = store.read().await?;
    let dead = tx.jobs_by_status(job_status::DEAD, 1).await?;
    let running = tx.jobs_by_status(job_status::RUNNING, 1).await?;
    tx.commit().await?;
    if let Some(job) = dead.first() {
        bail!("job {} is dead: {:?}", job.id, job.last_error);
    }
    if let Some(job) = running.first() {
        bail!("job {} is still running after the workers stopped", job.id);
    }
    Ok(Figures {
        wall,
        steady: wall.saturating_sub(first_at - started),
        after_first: expected - sent_at_first,
        worker_cpu,
        machine_busy,
        verified: format!("{}, no dead job", counts.summary),
    })
}

/// Busy and total clock ticks of all cores since boot, from the `cpu` line of `/proc/stat`
/// (user nice system idle iowait irq softirq steal …; idle and iowait are not busy).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(&stat)
}

fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let all: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((all - idle, all))
}

/// The worker processes. Dropping them kills any still running, so an error leaves none
/// behind.
struct Workers(Vec<Child>);

impl Workers {
    fn start(
        exe: &Path,
        dir: &Path,
        env: &[(String, String)],
        n: usize,
    ) -> anyhow::Result<Workers> {
        let mut workers = Workers(Vec::with_capacity(n));
        for _ in 0..n {
            let mut command = Command::new(exe);
            command
                .arg("--dir")
                .arg(dir)
                .args(["serve", "--role", "worker"])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            // The workers get exactly the settings this process ingested with, not stray
            // overrides from the caller's environment.
            for (key, _) in std::env::vars() {
                if key.starts_with("HERALD_") && key.contains("__") {
                    command.env_remove(key);
                }
            }
            command.envs(env.iter().map(|(k, v)| (k, v)));
            let child = command
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            workers.0.push(child);
        }
        Ok(workers)
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        for child in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                bail!("worker {} exited early ({status})", child.id());
            }
        }
        Ok(())
    }

    /// CPU time used so far by all workers (read while they still run).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let ticks = clock_ticks_per_second();
        self.0.iter().try_fold(Duration::ZERO, |sum, child| {
            let stat = format!("/proc/{}/stat", child.id());
            Ok(sum + cpu_time(Path::new(&stat), ticks)?)
        })
    }

    /// SIGTERM to every worker, then waits for them to finish (killing any that takes longer
    /// than [`STOP_GRACE`]).
    async fn stop(&mut self) -> anyhow::Result<()> {
        for child in &self.0 {
            // No libc here: `kill` sends the signal.
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .context("cannot run kill")?;
            if !status.success() {
                bail!("kill -TERM {} failed", child.id());
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for child in &mut self.0 {
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        eprintln!("warning: worker {} stopped with {status}", child.id());
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    eprintln!("warning: worker {} ignored SIGTERM; killing it", child.id());
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_name_replaces_the_servers_database() {
        let name = "herald_bench_x";
        assert_eq!(
            database_on("postgres://postgres@127.0.0.1:5432/postgres", name).ok(),
            Some("postgres://postgres@127.0.0.1:5432/herald_bench_x".to_owned())
        );
        assert_eq!(
            database_on("postgresql://u:p@db/main?sslmode=disable", name).ok(),
            Some("postgresql://u:p@db/herald_bench_x?sslmode=disable".to_owned())
        );
        assert_eq!(
            database_on("postgres://u@db", name).ok(),
            Some("postgres://u@db/herald_bench_x".to_owned())
        );
        assert!(database_on("sqlite://bench.db", name).is_err());
        assert!(database_on("127.0.0.1:5432", name).is_err());
    }

    #[test]
    fn machine_ticks_count_everything_but_idle_and_iowait_as_busy() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1\n";
        assert_eq!(parse_machine_ticks(stat), Some((160, 1000)));
        assert_eq!(parse_machine_ticks("cpu0 1 2 3\n"), None);
    }
}
