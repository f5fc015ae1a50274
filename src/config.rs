//! Settings: built-in defaults, then `herald.toml` (optional), then `HERALD_SECTION__KEY`
//! environment variables. Every setting has a default, so Herald runs with no file at all.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

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
    #[serde(deserialize_with = "deserialize_transports")]
    pub transports: BTreeMap<String, TransportSettings>,
    /// DKIM signing of SMTP mail; off when absent.
    #[serde(default)]
    pub dkim: Option<DkimSettings>,
    pub workers: WorkerSettings,
    pub suppression: SuppressionSettings,
    #[serde(default)]
    pub webhooks: WebhookSettings,
    pub profile: ProfileSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    /// Connection pool size (PostgreSQL, and SQLite readers).
    pub max_connections: u32,
    /// SQLite: the CPU the writer thread keeps to, `auto`, `off` or a CPU number.
    pub writer_cpu: String,
}

impl DatabaseSettings {
    pub fn writer_cpu(&self) -> Result<crate::store::WriterCpu, String> {
        crate::store::WriterCpu::parse(&self.writer_cpu).ok_or_else(|| {
            format!(
                "database.writer_cpu: `{}` is not `auto`, `off` or a CPU number",
                self.writer_cpu
            )
        })
    }
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
    /// Transport per workflow category, overriding `transport` (a step's own `transport` wins
    /// over both).
    #[serde(default)]
    pub categories: CategoryTransports,
}

/// `[sending.categories]`: which transport carries each category of mail.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryTransports {
    pub marketing: Option<String>,
    pub transactional: Option<String>,
}

/// `[dkim]`: signs mail sent over SMTP (REST providers sign with their own keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSettings {
    /// The signing domain (`d=`), normally the domain of the `From` address.
    pub domain: String,
    /// The selector (`s=`): the public key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// RSA key in PKCS#1 PEM, or an Ed25519 key as the base64 of its 32-byte seed; relative
    /// paths are resolved against the project directory.
    pub private_key_file: PathBuf,
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

/// `[profile]`: how the computed profile (engagement, purchases, RFM, lifecycle) reads behavior.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSettings {
    /// Engaged (a human open or click, or signing up) this recently: `active`.
    pub active_within: String,
    /// Engaged this recently, but not within `active_within`: `inactive`; longer: `dormant`.
    pub inactive_within: String,
    /// Never engaged after this many sent emails: `dormant` at once.
    pub dormant_after_sends: u32,
    /// The event that records a purchase, and its numeric value property.
    pub order_event: String,
    pub order_value: String,
    /// Purchasers whose total value reaches this amount are `high-value`…
    pub high_value_total: Option<f64>,
    /// …or, without a fixed amount, this top share of purchasers by total value (0.1 = 10 %).
    pub high_value_share: f64,
    /// When RFM scores and the high-value threshold are recomputed over all purchasers (cron, UTC).
    pub refresh: String,
    /// Events that move a contact to each lifecycle stage; the furthest stage reached holds.
    pub lifecycle: LifecycleSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSettings {
    pub awareness: Vec<String>,
    pub consideration: Vec<String>,
    pub decision: Vec<String>,
    /// Besides these events, a second purchase reaches `retention`.
    pub retention: Vec<String>,
    pub advocacy: Vec<String>,
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

/// A secret setting (API key, token, password). Its `Debug` output is masked so settings can be
/// logged without leaking credentials.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `[transports.<name>]`: what the transport is (`kind` and its own keys) plus the keys every
/// kind accepts: `rate`, `concurrency` and `fallback`.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    pub kind: TransportKind,
    /// Messages per second this process hands to the transport (fractions allowed); unlimited
    /// when unset.
    pub rate: Option<f64>,
    /// Requests in flight at once from this process; unlimited when unset (SMTP is bounded by
    /// `pool` anyway).
    pub concurrency: Option<usize>,
    /// Transports tried, in order, when this one is unavailable (transient failure or open
    /// circuit); never after a permanent rejection.
    pub fallback: Vec<String>,
}

/// The keys shared by every kind; everything else belongs to [`TransportKind`].
const COMMON_TRANSPORT_KEYS: [&str; 3] = ["rate", "concurrency", "fallback"];

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransportKind {
    Outbox {
        dir: PathBuf,
    },
    Smtp {
        url: String,
        #[serde(default = "default_pool")]
        pool: usize,
        /// Connect and per-command timeout, e.g. "30s".
        #[serde(default = "default_timeout")]
        timeout: String,
        #[serde(default)]
        hello_name: Option<String>,
    },
    /// Postmark, `POST /email`.
    Postmark {
        token: Secret,
        #[serde(default)]
        base_url: Option<String>,
        /// Postmark message stream (`outbound` when unset; e.g. `broadcast` for marketing).
        #[serde(default)]
        message_stream: Option<String>,
        #[serde(default = "default_timeout")]
        timeout: String,
    },
    /// SendGrid, `POST /v3/mail/send`.
    Sendgrid {
        api_key: Secret,
        #[serde(default)]
        base_url: Option<String>,
        #[serde(default = "default_timeout")]
        timeout: String,
    },
    /// Mailgun, `POST /v3/{domain}/messages`; `base_url` selects the region.
    Mailgun {
        api_key: Secret,
        domain: String,
        #[serde(default)]
        base_url: Option<String>,
        #[serde(default = "default_timeout")]
        timeout: String,
    },
    /// Amazon SES v2 `SendEmail` with the raw MIME message.
    Ses {
        region: String,
        access_key_id: String,
        secret_access_key: Secret,
        #[serde(default)]
        base_url: Option<String>,
        /// SES configuration set (event publishing for delivery webhooks).
        #[serde(default)]
        configuration_set: Option<String>,
        #[serde(default = "default_timeout")]
        timeout: String,
    },
    /// Resend, `POST /emails` with an idempotency key.
    Resend {
        api_key: Secret,
        #[serde(default)]
        base_url: Option<String>,
        #[serde(default = "default_timeout")]
        timeout: String,
    },
}

impl TransportKind {
    /// The `kind` value as written in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            TransportKind::Outbox { .. } => "outbox",
            TransportKind::Smtp { .. } => "smtp",
            TransportKind::Postmark { .. } => "postmark",
            TransportKind::Sendgrid { .. } => "sendgrid",
            TransportKind::Mailgun { .. } => "mailgun",
            TransportKind::Ses { .. } => "ses",
            TransportKind::Resend { .. } => "resend",
        }
    }

    /// The `timeout` setting of the kinds that have one.
    pub fn timeout(&self) -> Option<&str> {
        match self {
            TransportKind::Outbox { .. } => None,
            TransportKind::Smtp { timeout, .. }
            | TransportKind::Postmark { timeout, .. }
            | TransportKind::Sendgrid { timeout, .. }
            | TransportKind::Mailgun { timeout, .. }
            | TransportKind::Ses { timeout, .. }
            | TransportKind::Resend { timeout, .. } => Some(timeout),
        }
    }

    /// The `base_url` setting of the REST kinds, when given.
    pub fn base_url(&self) -> Option<&str> {
        match self {
            TransportKind::Outbox { .. } | TransportKind::Smtp { .. } => None,
            TransportKind::Postmark { base_url, .. }
            | TransportKind::Sendgrid { base_url, .. }
            | TransportKind::Mailgun { base_url, .. }
            | TransportKind::Ses { base_url, .. }
            | TransportKind::Resend { base_url, .. } => base_url.as_deref(),
        }
    }
}

/// Reads `[transports]` one table at a time, so an error names the transport it is about.
fn deserialize_transports<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, TransportSettings>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(name, value)| {
            TransportSettings::from_value(value)
                .map(|settings| (name.clone(), settings))
                .map_err(|e| D::Error::custom(format!("transports.{name}: {e}")))
        })
        .collect()
}

impl TransportSettings {
    /// Splits the shared keys off and reads the rest as the kind's own table. (serde cannot
    /// combine `flatten` with `deny_unknown_fields`, and unknown keys must stay errors.)
    fn from_value(mut value: serde_json::Value) -> Result<TransportSettings, String> {
        let table = value
            .as_object_mut()
            .ok_or("expected a table with a `kind` key")?;
        let [rate, concurrency, fallback] = COMMON_TRANSPORT_KEYS.map(|key| table.remove(key));
        let rate = rate
            .map(|v| match v {
                serde_json::Value::Number(n) => n.as_f64().ok_or(()),
                serde_json::Value::String(s) => s.trim().parse::<f64>().map_err(|_| ()),
                _ => Err(()),
            })
            .transpose()
            .map_err(|()| "rate: expected messages per second, e.g. 10 or 0.5".to_owned())?;
        let concurrency = concurrency
            .map(|v| match v {
                serde_json::Value::Number(n) => n.as_u64().ok_or(()),
                serde_json::Value::String(s) => s.trim().parse::<u64>().map_err(|_| ()),
                _ => Err(()),
            })
            .transpose()
            .map_err(|()| "concurrency: expected a whole number".to_owned())?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let fallback = match fallback {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(format!("fallback: expected transport names, found {other}")),
                })
                .collect::<Result<_, _>>()?,
            // From the environment a list arrives as one string: `HERALD_TRANSPORTS__X__FALLBACK=a,b`.
            Some(serde_json::Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(other) => {
                return Err(format!("fallback: expected a list of names, found {other}"));
            }
        };
        let kind = TransportKind::deserialize(value).map_err(|e| e.to_string())?;
        Ok(TransportSettings {
            kind,
            rate,
            concurrency,
            fallback,
        })
    }
}

fn default_pool() -> usize {
    8
}

fn default_timeout() -> String {
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
    /// After SIGTERM or Ctrl-C: how long in-flight jobs may finish before they are cancelled
    /// and their leases released for another node.
    pub shutdown_grace: String,
}

impl TransportSettings {
    /// Checks value formats of one transport; `name` is its key under `[transports]`.
    fn check(&self, name: &str) -> Result<(), String> {
        if let Some(timeout) = self.kind.timeout() {
            let key = format!("transports.{name}.timeout");
            let parsed = crate::workflow::model::Duration::parse_setting(&key, timeout)?;
            if parsed.0 <= chrono::TimeDelta::zero() {
                return Err(format!("{key}: must be greater than zero"));
            }
        }
        if let TransportKind::Smtp { pool: 0, .. } = self.kind {
            return Err(format!("transports.{name}.pool: must be at least 1"));
        }
        if let Some(url) = self.kind.base_url() {
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !ok {
                return Err(format!(
                    "transports.{name}.base_url: `{url}` is not an http:// or https:// URL"
                ));
            }
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!(
                "transports.{name}.rate: must be a positive number of messages per second"
            ));
        }
        if self.concurrency == Some(0) {
            return Err(format!("transports.{name}.concurrency: must be at least 1"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for fallback in &self.fallback {
            if fallback == name {
                return Err(format!(
                    "transports.{name}.fallback: a transport cannot be its own fallback"
                ));
            }
            if !seen.insert(fallback) {
                return Err(format!(
                    "transports.{name}.fallback: `{fallback}` is listed twice"
                ));
            }
        }
        Ok(())
    }
}

/// The first cycle in the fallback graph, as the names along it (first name repeated at the
/// end), if there is one. Fallbacks chain (a fallback's own fallbacks are tried after it), so a
/// cycle would make the chain endless.
fn fallback_cycle(transports: &BTreeMap<String, TransportSettings>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        transports: &'a BTreeMap<String, TransportSettings>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        path.push(name);
        for next in transports
            .get(name)
            .map(|t| t.fallback.as_slice())
            .unwrap_or_default()
        {
            if let Some(cycle) = visit(next, transports, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    transports
        .keys()
        .find_map(|name| visit(name, transports, &mut marks, &mut Vec::new()))
}

const DEFAULTS: &str = r#"
[database]
url = "sqlite://herald.db"
max_connections = 16
writer_cpu = "auto"

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
shutdown_grace = "20s"

[profile]
active_within = "30d"
inactive_within = "180d"
dormant_after_sends = 5
order_event = "order_placed"
order_value = "total"
high_value_share = 0.1
refresh = "0 * * * *"

[profile.lifecycle]
awareness = ["signed_up", "page_viewed"]
consideration = ["product_viewed", "cart_updated", "email_clicked"]
decision = ["checkout_started", "order_placed"]
retention = []
advocacy = ["review_posted", "referral_sent"]
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
                .with_list_parse_key("profile.lifecycle.awareness")
                .with_list_parse_key("profile.lifecycle.consideration")
                .with_list_parse_key("profile.lifecycle.decision")
                .with_list_parse_key("profile.lifecycle.retention")
                .with_list_parse_key("profile.lifecycle.advocacy")
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
        self.database.writer_cpu()?;
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
            ("workers.shutdown_grace", &self.workers.shutdown_grace),
        ] {
            crate::workflow::model::Duration::parse_setting(key, value)?;
        }
        for (category, name) in [
            ("marketing", &self.sending.categories.marketing),
            ("transactional", &self.sending.categories.transactional),
        ] {
            if let Some(name) = name
                && !self.transports.contains_key(name)
            {
                return Err(format!(
                    "sending.categories.{category}: no transport named `{name}`"
                ));
            }
        }
        for (name, t) in &self.transports {
            t.check(name)?;
            for fallback in &t.fallback {
                if !self.transports.contains_key(fallback) {
                    return Err(format!(
                        "transports.{name}.fallback: no transport named `{fallback}`"
                    ));
                }
            }
        }
        if let Some(cycle) = fallback_cycle(&self.transports) {
            return Err(format!(
                "transports.{}.fallback: fallback cycle {}",
                cycle[0],
                cycle.join(" → ")
            ));
        }
        if let Some(dkim) = &self.dkim {
            for (key, value) in [
                ("dkim.domain", &dkim.domain),
                ("dkim.selector", &dkim.selector),
            ] {
                if value.trim().is_empty() {
                    return Err(format!("{key}: must not be empty"));
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
        crate::segment::ProfileRules::from_settings(&self.profile)?;
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

    /// The transport a category of mail goes through when its step names none.
    pub fn category_transport(&self, category: crate::workflow::model::Category) -> &str {
        use crate::workflow::model::Category;
        let chosen = match category {
            Category::Marketing => &self.sending.categories.marketing,
            Category::Transactional => &self.sending.categories.transactional,
        };
        chosen.as_deref().unwrap_or(&self.sending.transport)
    }

    /// The default contact time zone (validated at load).
    pub fn default_timezone(&self) -> chrono_tz::Tz {
        self.sending.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("herald.toml"), toml).map_err(|e| e.to_string())?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_with_env(dir.path(), None, &env).map_err(|e| e.to_string())
    }

    const PROVIDERS: &str = r#"
[sending]
transport = "postmark"
categories = { marketing = "ses", transactional = "postmark" }

[transports.postmark]
kind = "postmark"
token = "pm-secret"
message_stream = "outbound"
rate = 10
concurrency = 4
fallback = ["sendgrid", "smtp"]

[transports.sendgrid]
kind = "sendgrid"
api_key = "sg-secret"
rate = 0.5

[transports.mailgun]
kind = "mailgun"
api_key = "mg-secret"
domain = "mg.shop.example"
base_url = "https://api.eu.mailgun.net"

[transports.ses]
kind = "ses"
region = "eu-west-1"
access_key_id = "AKID"
secret_access_key = "ses-secret"
timeout = "10s"

[transports.resend]
kind = "resend"
api_key = "re-secret"

[transports.smtp]
kind = "smtp"
url = "smtp://127.0.0.1:2525"

[dkim]
domain = "shop.example"
selector = "herald"
private_key_file = "dkim.pem"
"#;

    #[test]
    fn every_provider_kind_and_the_shared_keys_load() {
        let settings = load(PROVIDERS, &[]).unwrap();
        let postmark = &settings.transports["postmark"];
        assert_eq!(postmark.kind.name(), "postmark");
        assert_eq!(postmark.rate, Some(10.0));
        assert_eq!(postmark.concurrency, Some(4));
        assert_eq!(postmark.fallback, ["sendgrid", "smtp"]);
        assert_eq!(settings.transports["sendgrid"].rate, Some(0.5));
        assert_eq!(
            settings.transports["mailgun"].kind.base_url(),
            Some("https://api.eu.mailgun.net")
        );
        assert_eq!(settings.transports["ses"].kind.timeout(), Some("10s"));
        assert!(settings.transports["resend"].fallback.is_empty());
        use crate::workflow::model::Category;
        assert_eq!(settings.category_transport(Category::Marketing), "ses");
        assert_eq!(
            settings.category_transport(Category::Transactional),
            "postmark"
        );
        assert_eq!(
            settings.dkim.as_ref().map(|d| d.selector.as_str()),
            Some("herald")
        );
        // Secrets never reach Debug output.
        let debug = format!("{settings:?}");
        assert!(!debug.contains("-secret"), "{debug}");
    }

    #[test]
    fn the_writer_cpu_is_auto_off_or_a_number() {
        use crate::store::WriterCpu;
        let cpu = |toml: &str, env: &[(&str, &str)]| load(toml, env)?.database.writer_cpu();
        assert_eq!(cpu("", &[]), Ok(WriterCpu::Auto));
        assert_eq!(
            cpu("[database]\nwriter_cpu = \"off\"", &[]),
            Ok(WriterCpu::Off)
        );
        assert_eq!(
            cpu("", &[("HERALD_DATABASE__WRITER_CPU", "1")]),
            Ok(WriterCpu::Cpu(1))
        );
        let err = load("[database]\nwriter_cpu = \"fast\"", &[]).unwrap_err();
        assert!(
            err.contains("herald.toml") && err.contains("database.writer_cpu: `fast`"),
            "{err}"
        );
    }

    #[test]
    fn shared_keys_can_come_from_the_environment() {
        let settings = load(
            PROVIDERS,
            &[
                ("HERALD_TRANSPORTS__RESEND__FALLBACK", "ses, smtp"),
                ("HERALD_TRANSPORTS__RESEND__RATE", "2.5"),
                ("HERALD_TRANSPORTS__RESEND__CONCURRENCY", "3"),
            ],
        )
        .unwrap();
        let resend = &settings.transports["resend"];
        assert_eq!(resend.fallback, ["ses", "smtp"]);
        assert_eq!(resend.rate, Some(2.5));
        assert_eq!(resend.concurrency, Some(3));
    }

    #[test]
    fn the_default_category_transport_is_the_sending_transport() {
        let settings = load("", &[]).unwrap();
        use crate::workflow::model::Category;
        assert_eq!(settings.category_transport(Category::Marketing), "outbox");
        assert_eq!(
            settings.category_transport(Category::Transactional),
            "outbox"
        );
    }

    #[test]
    fn bad_transport_settings_name_their_key() {
        let base = "[transports.a]\nkind = \"resend\"\napi_key = \"k\"\n\
                    [transports.b]\nkind = \"resend\"\napi_key = \"k\"\n";
        let cases = [
            (
                "[transports.a]\nkind = \"postmark\"\ntokn = \"x\"\n",
                "transports.a: unknown field `tokn`",
            ),
            (
                "[transports.a]\nkind = \"postmark\"\n",
                "transports.a: missing field `token`",
            ),
            (
                "[transports.a]\nkind = \"carrier-pigeon\"\n",
                "transports.a: unknown variant `carrier-pigeon`",
            ),
            (
                &format!(
                    "{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\nfallback = [\"z\"]\n"
                ),
                "transports.c.fallback: no transport named `z`",
            ),
            (
                &format!(
                    "{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\nfallback = [\"c\"]\n"
                ),
                "transports.c.fallback: a transport cannot be its own fallback",
            ),
            (
                &format!(
                    "{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\nfallback = [\"a\", \"a\"]\n"
                ),
                "transports.c.fallback: `a` is listed twice",
            ),
            (
                "[transports.a]\nkind = \"resend\"\napi_key = \"k\"\nfallback = [\"b\"]\n\
              [transports.b]\nkind = \"resend\"\napi_key = \"k\"\nfallback = [\"c\"]\n\
              [transports.c]\nkind = \"resend\"\napi_key = \"k\"\nfallback = [\"a\"]\n",
                "transports.a.fallback: fallback cycle a → b → c → a",
            ),
            (
                &format!("{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\nrate = 0\n"),
                "transports.c.rate: must be a positive number",
            ),
            (
                &format!(
                    "{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\nrate = \"fast\"\n"
                ),
                "transports.c: rate: expected messages per second",
            ),
            (
                &format!(
                    "{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\nconcurrency = 0\n"
                ),
                "transports.c.concurrency: must be at least 1",
            ),
            (
                &format!(
                    "{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\nbase_url = \"ftp://x\"\n"
                ),
                "transports.c.base_url: `ftp://x` is not an http:// or https:// URL",
            ),
            (
                &format!(
                    "{base}[transports.c]\nkind = \"resend\"\napi_key = \"k\"\ntimeout = \"0s\"\n"
                ),
                "transports.c.timeout: must be greater than zero",
            ),
            (
                "[sending.categories]\nmarketing = \"nowhere\"\n",
                "sending.categories.marketing: no transport named `nowhere`",
            ),
            (
                "[sending.categories]\nbulk = \"outbox\"\n",
                "unknown field `bulk`",
            ),
            (
                "[dkim]\ndomain = \"\"\nselector = \"s\"\nprivate_key_file = \"k\"\n",
                "dkim.domain: must not be empty",
            ),
        ];
        for (toml, expected) in cases {
            let err = load(toml, &[]).expect_err(toml);
            assert!(
                err.contains(expected),
                "{toml}\n→ {err}\n(expected {expected})"
            );
        }
    }
}
