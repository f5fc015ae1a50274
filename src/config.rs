//! Settings: built-in defaults, then `herald.toml` (optional), then `HERALD_SECTION__KEY`
//! environment variables. Every setting has a default, so Herald runs with no file at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub server: ServerSettings,
    pub sending: SendingSettings,
    #[serde(default)]
    pub tracking: TrackingSettings,
    pub transports: BTreeMap<String, TransportSettings>,
    pub workers: WorkerSettings,
    pub suppression: SuppressionSettings,
    #[serde(default)]
    pub webhooks: WebhookSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    /// Connection pool size (PostgreSQL, and SQLite readers).
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    /// Base of tracking and unsubscribe links.
    pub public_url: String,
    /// Bearer keys accepted on `/v1`; empty means the API is open (local use).
    pub api_keys: Vec<String>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendingSettings {
    pub from: String,
    /// Name of the default transport.
    pub transport: String,
    /// Time zone for contacts without a `timezone` attribute.
    pub timezone: String,
    pub quiet_hours: Option<QuietHours>,
    pub frequency_cap: Option<FrequencyCap>,
    /// Also offer `mailto:` in `List-Unsubscribe` (RFC 2369), for clients without one-click.
    pub unsubscribe_mailto: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    pub max: u32,
    pub per: String,
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingSettings {
    /// HMAC key for tracking and unsubscribe tokens. When unset, a random key is generated
    /// once and kept in the database so links in mail already sent keep working.
    pub secret: Option<String>,
    /// Open pixel and click redirects in marketing mail (workflows can turn it off).
    pub enabled: bool,
}

impl Default for TrackingSettings {
    fn default() -> Self {
        TrackingSettings {
            secret: None,
            enabled: true,
        }
    }
}

/// `[suppression]`: when soft bounces stop further mail to an address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionSettings {
    /// Soft bounces within `soft_bounce_window` that suppress the address.
    pub soft_bounce_limit: u32,
    pub soft_bounce_window: String,
}

/// `[webhooks.<provider>]`: how each provider's delivery webhooks are authenticated. A provider
/// without a section has no endpoint: `POST /webhooks/{provider}` answers 404.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub sendgrid: Option<SendgridWebhookSettings>,
    pub postmark: Option<PostmarkWebhookSettings>,
    pub mailgun: Option<MailgunWebhookSettings>,
    pub ses: Option<SesWebhookSettings>,
    pub resend: Option<ResendWebhookSettings>,
}

/// `[webhooks.sendgrid]`: the Signed Event Webhook's verification key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridWebhookSettings {
    /// Base64 DER `SubjectPublicKeyInfo`, as SendGrid shows it (a PEM block is accepted too).
    pub public_key: String,
}

/// `[webhooks.postmark]`: the HTTP Basic credentials set on the Postmark webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostmarkWebhookSettings {
    pub username: String,
    pub password: String,
}

/// `[webhooks.mailgun]`: the HTTP webhook signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailgunWebhookSettings {
    pub signing_key: String,
    /// Largest accepted distance between the signed timestamp and now, e.g. "5m".
    #[serde(default = "default_mailgun_tolerance")]
    pub tolerance: String,
}

fn default_mailgun_tolerance() -> String {
    "5m".to_owned()
}

/// `[webhooks.ses]`: SES events delivered by Amazon SNS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesWebhookSettings {
    /// Accepted SNS topic ARNs; at least one is required.
    #[serde(default)]
    pub topic_arns: Vec<String>,
    /// PEM files with SNS signing certificates, used instead of fetching `SigningCertURL`.
    /// Relative paths are relative to the project directory.
    #[serde(default)]
    pub certificates: Vec<PathBuf>,
}

/// `[webhooks.resend]`: the endpoint's signing secret (`whsec_…`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendWebhookSettings {
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransportSettings {
    Outbox {
        dir: PathBuf,
    },
    Smtp {
        url: String,
        #[serde(default = "default_pool")]
        pool: usize,
        /// Connect and per-command timeout, e.g. "30s".
        #[serde(default = "default_smtp_timeout")]
        timeout: String,
        #[serde(default)]
        hello_name: Option<String>,
    },
}

fn default_pool() -> usize {
    8
}

fn default_smtp_timeout() -> String {
    "30s".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Journey steps run concurrently by one process.
    pub concurrency: usize,
    /// How long a claimed job stays leased before the reaper may hand it to another worker.
    pub lease: String,
    /// Attempts before a job is dead.
    pub max_attempts: u32,
    /// Fallback poll interval for work enqueued by other processes.
    pub poll_interval: String,
}

const DEFAULTS: &str = r#"
[database]
url = "sqlite://herald.db"
max_connections = 16

[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
api_keys = []
body_limit = 2097152

[sending]
from = "Herald <herald@localhost>"
transport = "outbox"
timezone = "UTC"

[transports.outbox]
kind = "outbox"
dir = "outbox"

[suppression]
soft_bounce_limit = 3
soft_bounce_window = "30d"

[workers]
concurrency = 32
lease = "60s"
max_attempts = 8
poll_interval = "1s"
"#;

impl Settings {
    /// Loads settings for the project in `dir`: `config` (default `dir/herald.toml`, optional
    /// unless named explicitly) over the defaults, then the process environment.
    pub fn load(dir: &Path, config: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(dir, config, &env)
    }

    /// As [`Settings::load`], with an explicit environment (for tests).
    pub fn load_with_env(
        dir: &Path,
        config: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let (path, required) = match config {
            Some(p) => (p.to_path_buf(), true),
            None => (dir.join("herald.toml"), false),
        };
        let file_label = path.display().to_string();
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if required || path.exists() {
            builder = builder.add_source(
                config::File::from(path.clone())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("HERALD_") && k.contains("__"))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("HERALD")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("server.api_keys")
                .with_list_parse_key("webhooks.ses.topic_arns")
                .with_list_parse_key("webhooks.ses.certificates")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let invalid = |message: String| ConfigError::Invalid {
            file: file_label.clone(),
            message,
        };
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| invalid(e.to_string()))?;
        settings.check().map_err(invalid)?;
        Ok(settings)
    }

    /// Checks what serde cannot: references between settings and value formats.
    fn check(&self) -> Result<(), String> {
        if !self.transports.contains_key(&self.sending.transport) {
            return Err(format!(
                "sending.transport: no transport named `{}` (configured: {})",
                self.sending.transport,
                self.transports
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.sending.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(format!(
                "sending.timezone: `{}` is not an IANA time zone name",
                self.sending.timezone
            ));
        }
        for (key, value) in [
            ("workers.lease", &self.workers.lease),
            ("workers.poll_interval", &self.workers.poll_interval),
        ] {
            crate::workflow::model::Duration::parse_setting(key, value)?;
        }
        for (name, t) in &self.transports {
            if let TransportSettings::Smtp { timeout, pool, .. } = t {
                crate::workflow::model::Duration::parse_setting(
                    &format!("transports.{name}.timeout"),
                    timeout,
                )?;
                if *pool == 0 {
                    return Err(format!("transports.{name}.pool: must be at least 1"));
                }
            }
        }
        self.policy()?;
        crate::workflow::model::Duration::parse_setting(
            "suppression.soft_bounce_window",
            &self.suppression.soft_bounce_window,
        )?;
        if self.suppression.soft_bounce_limit == 0 {
            return Err("suppression.soft_bounce_limit: must be at least 1".to_owned());
        }
        if self.workers.concurrency == 0 {
            return Err("workers.concurrency: must be at least 1".to_owned());
        }
        crate::webhook::Verifier::check(&self.webhooks).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The `[sending]` etiquette defaults (validated at load).
    pub fn policy(&self) -> Result<crate::policy::Policy, String> {
        use crate::workflow::model::{CapOutcome, Duration, FrequencyCap, QuietHours};
        use crate::workflow::parse::{parse_cap_outcome, parse_time_of_day};
        let quiet_hours = match &self.sending.quiet_hours {
            None => None,
            Some(q) => Some(QuietHours {
                start: parse_time_of_day(&q.start)
                    .map_err(|e| format!("sending.quiet_hours.start: {e}"))?,
                end: parse_time_of_day(&q.end)
                    .map_err(|e| format!("sending.quiet_hours.end: {e}"))?,
            }),
        };
        let frequency_cap = match &self.sending.frequency_cap {
            None => None,
            Some(c) => {
                if c.max == 0 {
                    return Err("sending.frequency_cap.max: must be at least 1".to_owned());
                }
                Some(FrequencyCap {
                    max: c.max,
                    per: Duration::parse_setting("sending.frequency_cap.per", &c.per)?,
                    outcome: match &c.outcome {
                        None => CapOutcome::default(),
                        Some(o) => parse_cap_outcome(o)
                            .map_err(|e| format!("sending.frequency_cap.outcome: {e}"))?,
                    },
                })
            }
        };
        Ok(crate::policy::Policy {
            quiet_hours,
            frequency_cap,
        })
    }

    /// The default contact time zone (validated at load).
    pub fn default_timezone(&self) -> chrono_tz::Tz {
        self.sending.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}
