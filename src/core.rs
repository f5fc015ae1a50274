//! `Core`: everything a running Herald shares — settings, store, clock, workflows, templates,
//! transports and token keys — plus the ingestion entry points the API calls.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeDelta;

use crate::clock::Clock;
use crate::config::{Settings, TransportKind, TransportSettings};
use crate::message::dkim::DkimSigner;
use crate::project::Project;
use crate::store::{Store, StoreError};
use crate::template::TemplateRegistry;
use crate::tracking::Tokens;
use crate::transport::http::{HttpConfigError, HttpSettings};
use crate::transport::limit::Limiter;
use crate::transport::mailgun::{self, Mailgun, MailgunConfig};
use crate::transport::postmark::{self, Postmark, PostmarkConfig};
use crate::transport::resend::{self, Resend, ResendConfig};
use crate::transport::route::{RouteEntry, Router};
use crate::transport::sendgrid::{self, Sendgrid, SendgridConfig};
use crate::transport::ses::{Ses, SesConfig};
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
    pub segments: crate::segment::Segments,
    pub profile_rules: crate::segment::ProfileRules,
    pub templates: TemplateRegistry,
    /// Every configured transport, with its limits, fallbacks and circuit breaker.
    pub transports: Router,
    pub tokens: Tokens,
    pub verifier: crate::webhook::Verifier,
    /// Identifies this process in job leases.
    pub worker_id: String,
    pub lease: TimeDelta,
    pub poll: TimeDelta,
    /// How long in-flight jobs may finish after a stop request.
    pub shutdown_grace: std::time::Duration,
    pub max_attempts: i64,
    /// `[sending]` etiquette defaults; workflows may override them.
    pub policy: crate::policy::Policy,
    /// Open and click hits on their way to the database.
    pub hits: crate::tracking::hits::HitQueue,
    /// Journey steps, send receipts and single API events that arrive together commit in one
    /// transaction.
    pub group: crate::store::GroupCommit<Core>,
    pub(crate) waker: crate::scheduler::wake::Waker,
    /// Messages whose send a shutdown cancelled before any transport saw them (see
    /// `send::transmit`); the shutdown puts them back to `pending`.
    pub(crate) cancelled_unsent: std::sync::Mutex<Vec<String>>,
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
        let transports = build_transports(&settings, dir, &clock, Some(&store))?;
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
        let shutdown_grace = duration("workers.shutdown_grace", &settings.workers.shutdown_grace)?
            .to_std()
            .unwrap_or_default();
        let policy = settings.policy().map_err(BuildError::Setting)?;
        let verifier = crate::webhook::Verifier::new(&settings.webhooks, dir)
            .map_err(|e| BuildError::Setting(e.to_string()))?;
        let profile_rules = crate::segment::ProfileRules::from_settings(&settings.profile)
            .map_err(BuildError::Setting)?;
        Ok(Core {
            policy,
            max_attempts: i64::from(settings.workers.max_attempts.max(1)),
            settings,
            store,
            clock,
            workflows: project.workflows,
            segments: project.segments,
            profile_rules,
            templates: project.templates,
            transports,
            tokens,
            verifier,
            worker_id: format!("{}-{}", hostname_hint(), uuid::Uuid::now_v7()),
            lease,
            poll,
            shutdown_grace,
            hits: Default::default(),
            group: Default::default(),
            waker: Default::default(),
            cancelled_unsent: Default::default(),
        })
    }

    /// Runs `work` on the SQLite writer thread, where the writer connection's statements do not
    /// cross CPUs (see `store::WriterThread`); on PostgreSQL, on the calling task. `work` gets
    /// the shared core, so it must be shared (as `Application::build` does).
    pub(crate) async fn on_writer<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Core>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let core = self.group.owner().ok_or(StoreError::Abandoned)?;
        match self.store.writer_thread() {
            Some(thread) => thread.run(work(core)).await?,
            None => work(core).await,
        }
    }

    /// Tells the scheduler that new or sooner work exists.
    pub fn wake_scheduler(&self) {
        self.waker.wake();
    }

    pub(crate) async fn woken(&self) {
        self.waker.woken().await;
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
        self.transports.shutdown().await;
        self.store.close().await;
    }
}

/// Builds every configured transport and the routes through them; with a `store`, rate
/// limits are shared with the other nodes on it.
pub fn build_transports(
    settings: &Settings,
    dir: &Path,
    clock: &Clock,
    store: Option<&Store>,
) -> Result<Router, BuildError> {
    let dkim = settings
        .dkim
        .as_ref()
        .map(|d| {
            DkimSigner::from_file(&d.domain, &d.selector, &dir.join(&d.private_key_file))
                .map(Arc::new)
                .map_err(|e| BuildError::Setting(format!("dkim: {e}")))
        })
        .transpose()?;
    let mut entries = Vec::new();
    for (name, t) in &settings.transports {
        let transport = build_transport(name, t, dir, clock, dkim.clone())?;
        entries.push(RouteEntry {
            transport,
            limiter: match store {
                Some(store) => Limiter::new(t.rate, t.concurrency).shared(store, name),
                None => Limiter::new(t.rate, t.concurrency),
            },
            fallback: t.fallback.clone(),
        });
    }
    Router::new(clock.clone(), entries).map_err(|e| BuildError::Setting(e.to_string()))
}

fn build_transport(
    name: &str,
    t: &TransportSettings,
    dir: &Path,
    clock: &Clock,
    dkim: Option<Arc<DkimSigner>>,
) -> Result<Transport, BuildError> {
    let failed = |message: String| BuildError::Transport {
        name: name.to_owned(),
        message,
    };
    let http_failed = |e: HttpConfigError| failed(e.to_string());
    // Validated at load; the fallback only guards against a caller skipping validation.
    let timeout = |value: &str| {
        Duration::parse_setting(&format!("transports.{name}.timeout"), value)
            .map_err(BuildError::Setting)
            .map(|d| d.0.to_std().unwrap_or(std::time::Duration::from_secs(30)))
    };
    let http = |base_url: &Option<String>, default: &str, value: &str| {
        Ok::<_, BuildError>(HttpSettings {
            base_url: base_url.clone().unwrap_or_else(|| default.to_owned()),
            timeout: timeout(value)?,
        })
    };
    let clock = clock.clone();
    Ok(match &t.kind {
        TransportKind::Outbox { dir: out_dir } => {
            Transport::Outbox(Outbox::new(name.to_owned(), dir.join(out_dir)))
        }
        TransportKind::Smtp {
            url,
            pool,
            timeout: value,
            hello_name,
        } => {
            let config = SmtpConfig {
                url: url.clone(),
                pool: *pool,
                timeout: timeout(value)?,
                hello_name: hello_name.clone(),
                dkim,
            };
            Transport::Smtp(Smtp::new(name.to_owned(), config).map_err(|e| failed(e.to_string()))?)
        }
        TransportKind::Postmark {
            token,
            base_url,
            message_stream,
            timeout,
        } => {
            let config = PostmarkConfig {
                token: token.clone(),
                message_stream: message_stream.clone(),
                http: http(base_url, postmark::DEFAULT_BASE_URL, timeout)?,
            };
            Transport::Postmark(Postmark::new(name, config, clock).map_err(http_failed)?)
        }
        TransportKind::Sendgrid {
            api_key,
            base_url,
            timeout,
        } => {
            let config = SendgridConfig {
                api_key: api_key.clone(),
                http: http(base_url, sendgrid::DEFAULT_BASE_URL, timeout)?,
            };
            Transport::Sendgrid(Sendgrid::new(name, config, clock).map_err(http_failed)?)
        }
        TransportKind::Mailgun {
            api_key,
            domain,
            base_url,
            timeout,
        } => {
            let config = MailgunConfig {
                api_key: api_key.clone(),
                domain: domain.clone(),
                http: http(base_url, mailgun::DEFAULT_BASE_URL, timeout)?,
            };
            Transport::Mailgun(Mailgun::new(name, config, clock).map_err(http_failed)?)
        }
        TransportKind::Ses {
            region,
            access_key_id,
            secret_access_key,
            base_url,
            configuration_set,
            timeout,
        } => {
            let config = SesConfig {
                region: region.clone(),
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                configuration_set: configuration_set.clone(),
                http: http(base_url, &SesConfig::default_base_url(region), timeout)?,
            };
            Transport::Ses(Ses::new(name, config, clock).map_err(http_failed)?)
        }
        TransportKind::Resend {
            api_key,
            base_url,
            timeout,
        } => {
            let config = ResendConfig {
                api_key: api_key.clone(),
                http: http(base_url, resend::DEFAULT_BASE_URL, timeout)?,
            };
            Transport::Resend(Resend::new(name, config, clock).map_err(http_failed)?)
        }
    })
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hostname_hint() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".to_owned())
}
