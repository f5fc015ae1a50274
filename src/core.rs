//! `Core`: everything a running Herald shares — settings, store, clock, workflows, templates,
//! transports and token keys — plus the ingestion entry points the API calls.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeDelta;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::{Settings, TransportSettings};
use crate::project::Project;
use crate::store::Store;
use crate::template::TemplateRegistry;
use crate::tracking::Tokens;
use crate::transport::{
    Transport,
    outbox::Outbox,
    smtp::{Smtp, SmtpConfig},
};
use crate::workflow::Workflows;
use crate::workflow::model::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("transport `{name}`: {message}")]
    Transport { name: String, message: String },
    #[error("{0}")]
    Setting(String),
}

pub struct Core {
    pub settings: Settings,
    pub store: Store,
    pub clock: Clock,
    pub workflows: Workflows,
    pub templates: TemplateRegistry,
    pub transports: HashMap<String, Arc<Transport>>,
    pub tokens: Tokens,
    pub verifier: crate::webhook::Verifier,
    /// Identifies this process in job leases.
    pub worker_id: String,
    pub lease: TimeDelta,
    pub poll: TimeDelta,
    pub max_attempts: i64,
    /// `[sending]` etiquette defaults; workflows may override them.
    pub policy: crate::policy::Policy,
    wake: Notify,
}

impl Core {
    /// Connects nothing itself: takes an open, migrated store and a validated project.
    pub async fn new(
        settings: Settings,
        store: Store,
        clock: Clock,
        project: Project,
        dir: &Path,
    ) -> Result<Core, BuildError> {
        let transports = build_transports(&settings, dir)?;
        let secret = match &settings.tracking.secret {
            Some(s) => s.clone(),
            None => {
                store
                    .meta_get_or_insert("tracking_secret", random_secret)
                    .await?
            }
        };
        let tokens = Tokens::new(&secret)
            .map_err(|e| BuildError::Setting(format!("tracking.secret: {e}")))?;
        let duration = |key: &str, value: &str| {
            Duration::parse_setting(key, value)
                .map(|d| d.0)
                .map_err(BuildError::Setting)
        };
        let lease = duration("workers.lease", &settings.workers.lease)?;
        let poll = duration("workers.poll_interval", &settings.workers.poll_interval)?;
        let policy = settings.policy().map_err(BuildError::Setting)?;
        let verifier = crate::webhook::Verifier::new(&settings.webhooks, dir)
            .map_err(|e| BuildError::Setting(e.to_string()))?;
        Ok(Core {
            policy,
            max_attempts: i64::from(settings.workers.max_attempts.max(1)),
            settings,
            store,
            clock,
            workflows: project.workflows,
            templates: project.templates,
            transports,
            tokens,
            verifier,
            worker_id: format!("{}-{}", hostname_hint(), uuid::Uuid::now_v7()),
            lease,
            poll,
            wake: Notify::new(),
        })
    }

    /// Tells the scheduler that new or sooner work exists.
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The one-click unsubscribe link for a contact, tied to the message that carried it.
    pub fn unsubscribe_url(&self, contact_id: &str, message_id: &str) -> String {
        let token = self.tokens.sign(
            crate::tracking::unsubscribe::PURPOSE,
            &format!("{contact_id}\n{message_id}"),
        );
        format!(
            "{}/u/{token}",
            self.settings.server.public_url.trim_end_matches('/')
        )
    }

    /// Closes transport connections and the database.
    pub async fn shutdown(&self) {
        for t in self.transports.values() {
            t.shutdown().await;
        }
        self.store.close().await;
    }
}

fn build_transports(
    settings: &Settings,
    dir: &Path,
) -> Result<HashMap<String, Arc<Transport>>, BuildError> {
    let mut out = HashMap::new();
    for (name, t) in &settings.transports {
        let transport = match t {
            TransportSettings::Outbox { dir: out_dir } => {
                Transport::Outbox(Outbox::new(name.clone(), dir.join(out_dir)))
            }
            TransportSettings::Smtp {
                url,
                pool,
                timeout,
                hello_name,
            } => {
                let timeout =
                    Duration::parse_setting(&format!("transports.{name}.timeout"), timeout)
                        .map_err(BuildError::Setting)?
                        .0
                        .to_std()
                        .unwrap_or(std::time::Duration::from_secs(30));
                let config = SmtpConfig {
                    url: url.clone(),
                    pool: *pool,
                    timeout,
                    hello_name: hello_name.clone(),
                };
                Transport::Smtp(Smtp::new(name.clone(), config).map_err(|e| {
                    BuildError::Transport {
                        name: name.clone(),
                        message: e.to_string(),
                    }
                })?)
            }
        };
        out.insert(name.clone(), Arc::new(transport));
    }
    Ok(out)
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hostname_hint() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".to_owned())
}
