//! `Application`: builds a running Herald from settings — store (connected and migrated),
//! project (validated), core, HTTP listener — and runs the API and the workers until told to
//! stop. Tests build it on port 0 with a manual clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Settings;
use crate::core::Core;
use crate::diagnostic::Diagnostic;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{}", render_diagnostics(.0))]
    Project(Vec<Diagnostic>),
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Build(#[from] crate::core::BuildError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

pub fn render_diagnostics(d: &[Diagnostic]) -> String {
    let mut out = format!("{} problem(s) in the project:\n", d.len());
    for diag in d {
        out.push_str(&format!("{diag}\n"));
    }
    out
}

/// What runs: the HTTP API, the workers, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    All,
    Api,
    Worker,
}

pub struct Application {
    pub core: Arc<Core>,
    listener: Option<TcpListener>,
    addr: Option<SocketAddr>,
    role: Role,
}

impl Application {
    pub async fn build(
        settings: Settings,
        dir: &Path,
        clock: Clock,
        role: Role,
    ) -> Result<Application, AppError> {
        let transports: Vec<String> = settings.transports.keys().cloned().collect();
        let project = crate::project::load(dir, &transports).map_err(AppError::Project)?;
        let store = Store::connect(
            &resolve_db_url(&settings.database.url, dir),
            settings.database.max_connections,
            settings
                .database
                .writer_cpu()
                .map_err(crate::core::BuildError::Setting)?,
        )
        .await?;
        store.migrate().await?;
        let (listener, addr) = if role == Role::Worker {
            (None, None)
        } else {
            let listen = settings.server.listen.clone();
            let listener = TcpListener::bind(&listen)
                .await
                .map_err(|source| AppError::Listen {
                    addr: listen.clone(),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| AppError::Listen {
                addr: listen,
                source,
            })?;
            (Some(listener), Some(addr))
        };
        let core = Arc::new(Core::new(settings, store, clock, project, dir).await?);
        core.group.bind(&core);
        crate::scheduler::sync_definitions(&core).await?;
        crate::segment::membership::sync_definitions(&core).await?;
        Ok(Application {
            core,
            listener,
            addr,
            role,
        })
    }

    /// The bound HTTP address (port 0 resolved), when serving HTTP.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then stops claiming work, lets in-flight jobs
    /// finish (bounded), and closes connections.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let core = Arc::clone(&self.core);
        // Cross-node wake-ups (PostgreSQL): every node announces the work it queues; nodes
        // with workers listen. They stop after the workers, before the store closes.
        let stop_wake = CancellationToken::new();
        let mut wake_tasks = Vec::new();
        if core.store.backend() == crate::store::Backend::Postgres {
            use crate::scheduler::wake;
            wake_tasks.push(tokio::spawn(wake::announce(
                Arc::clone(&core),
                stop_wake.clone(),
            )));
            if self.role != Role::Api {
                wake_tasks.push(tokio::spawn(wake::listen(
                    Arc::clone(&core),
                    stop_wake.clone(),
                )));
            }
        }
        let workers = (self.role != Role::Api)
            .then(|| tokio::spawn(crate::scheduler::run(Arc::clone(&core), shutdown.clone())));
        if let Some(listener) = self.listener {
            let stop_hits = CancellationToken::new();
            let hits = core.hits.start(Arc::clone(&core), stop_hits.clone());
            let router = crate::api::router(Arc::clone(&core));
            let stop = shutdown.clone();
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            // Requests are done: record the hits they queued before the store closes.
            stop_hits.cancel();
            if let Some(recorder) = hits {
                let _ = recorder.await;
            }
            served?;
        } else {
            shutdown.cancelled().await;
        }
        if let Some(w) = workers {
            let _ = w.await;
        }
        stop_wake.cancel();
        for task in wake_tasks {
            let _ = task.await;
        }
        core.shutdown().await;
        Ok(())
    }
}

/// Makes a relative SQLite path relative to the project directory.
pub fn resolve_db_url(url: &str, dir: &Path) -> String {
    match url.strip_prefix("sqlite://") {
        Some(rest) if !rest.starts_with('/') && !rest.starts_with(':') => {
            let (path, query) = rest
                .split_once('?')
                .map_or((rest, None), |(p, q)| (p, Some(q)));
            let full: PathBuf = dir.join(path);
            match query {
                Some(q) => format!("sqlite://{}?{q}", full.display()),
                None => format!("sqlite://{}", full.display()),
            }
        }
        _ => url.to_owned(),
    }
}
