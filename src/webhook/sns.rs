//! Amazon SNS HTTP(S) messages carrying SES events: envelope verification, certificates and
//! subscription handling. The SES payload inside `Message` is decoded by [`super::ses`].
//!
//! Verification follows the SNS documentation, in this order (cheap checks first, so a forged
//! request cannot make Herald fetch anything it would reject anyway):
//! 1. `TopicArn` must be one of `webhooks.ses.topic_arns`. The list may not be empty: SNS signs
//!    messages of *every* AWS account's topics, so without it anyone could subscribe Herald to a
//!    topic of their own and publish fake bounces.
//! 2. `Timestamp` must be at most 1 hour old (the longest an SNS HTTP delivery policy keeps
//!    retrying, and SNS keeps the original timestamp on retries) and at most 5 minutes ahead.
//! 3. `SigningCertURL` must be `https://sns.<region>.amazonaws.com[.cn]/….pem`, with no user
//!    info, port, query or fragment.
//! 4. The RSA PKCS#1 v1.5 signature (SHA-1 for `SignatureVersion` 1, SHA-256 for 2) must verify
//!    over the string to sign built from the message's fields for its `Type`, with a certificate
//!    valid now. When `webhooks.ses.certificates` lists PEM files, only those certificates are
//!    tried and nothing is ever fetched (offline use); otherwise the certificate is fetched over
//!    https (no redirects, 10 s, 64 KiB at most) and cached by URL.
//!
//! Only then is the message acted on: a `SubscriptionConfirmation` is returned for the caller to
//! confirm, an `UnsubscribeConfirmation` is ignored, and a `Notification`'s `Message` is decoded
//! as an SES event. The subscription must not use SNS "raw message delivery", which strips the
//! signed envelope: such requests cannot be authenticated and are refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::Url;
use serde_json::Value;
use x509_parser::pem::Pem;

use super::fields::{Object, parse_object, parse_rfc3339};
use super::{Outcome, Parsed, WebhookConfigError, WebhookError, WebhookRequest};
use crate::config::SesWebhookSettings;

/// Oldest accepted message, by its `Timestamp`.
const MAX_AGE: TimeDelta = TimeDelta::hours(1);
/// How far in the future a `Timestamp` may be (clock skew).
const MAX_SKEW: TimeDelta = TimeDelta::minutes(5);
/// Whole-request timeout of a certificate fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest certificate file accepted from `SigningCertURL` (real ones are about 2 KiB).
const MAX_CERT_BYTES: usize = 64 * 1024;
/// Cached certificates before the cache is emptied; SNS uses a handful of URLs at a time.
const MAX_CACHED_CERTS: usize = 64;

/// Verifies SNS messages for the accepted topics.
pub(super) struct SnsVerifier {
    topic_arns: Vec<String>,
    certificates: Certificates,
}

/// Where signing certificates come from.
enum Certificates {
    /// From `webhooks.ses.certificates`; never fetched.
    Configured(Vec<SigningCert>),
    /// From `SigningCertURL`, cached by URL.
    Fetched {
        client: reqwest::Client,
        cache: Mutex<HashMap<String, Arc<SigningCert>>>,
    },
}

/// The public key of an SNS signing certificate, ready for both signature versions.
struct SigningCert {
    sha1: ParsedPublicKey,
    sha256: ParsedPublicKey,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

impl SigningCert {
    fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    fn verifies(&self, version: SignatureVersion, message: &[u8], signature: &[u8]) -> bool {
        let key = match version {
            SignatureVersion::Sha1 => &self.sha1,
            SignatureVersion::Sha256 => &self.sha256,
        };
        key.verify_sig(message, signature).is_ok()
    }
}

/// Every certificate in a PEM buffer; an error when there is none or one cannot be used.
fn parse_pem(pem: &[u8]) -> Result<Vec<SigningCert>, String> {
    let mut certs = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let x509 = block
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let spki = x509.public_key().raw;
        let key = |alg| {
            ParsedPublicKey::new(alg, spki).map_err(|_| "not an RSA key of 2048 bits or more")
        };
        let validity = x509.validity();
        let time = |t: i64| DateTime::from_timestamp(t, 0).ok_or("validity out of range");
        certs.push(SigningCert {
            sha1: key(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY)?,
            sha256: key(&RSA_PKCS1_2048_8192_SHA256)?,
            not_before: time(validity.not_before.timestamp())?,
            not_after: time(validity.not_after.timestamp())?,
        });
    }
    if certs.is_empty() {
        return Err("no CERTIFICATE block".to_owned());
    }
    Ok(certs)
}

/// The hash of an SNS signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignatureVersion {
    Sha1,
    Sha256,
}

/// The SNS message types; each has its own string to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

/// The fields of an SNS message, as raw strings (signatures cover them unmodified).
#[derive(Debug)]
struct Envelope<'a> {
    kind: MessageType,
    message_id: &'a str,
    topic_arn: &'a str,
    message: &'a str,
    timestamp: &'a str,
    subject: Option<&'a str>,
    subscribe_url: Option<&'a str>,
    token: Option<&'a str>,
    version: SignatureVersion,
    signature: &'a str,
    signing_cert_url: &'a str,
}

impl<'a> Envelope<'a> {
    /// Reads the fields verification needs; anything missing means the message cannot be
    /// authenticated.
    fn read(obj: &'a Object) -> Result<Envelope<'a>, WebhookError> {
        let raw = |key: &str| obj.get(key).and_then(Value::as_str);
        let required = |key: &str| {
            raw(key).ok_or_else(|| WebhookError::Unauthorized(format!("SNS message has no {key}")))
        };
        let kind = match required("Type")? {
            "Notification" => MessageType::Notification,
            "SubscriptionConfirmation" => MessageType::SubscriptionConfirmation,
            "UnsubscribeConfirmation" => MessageType::UnsubscribeConfirmation,
            other => {
                return Err(WebhookError::Unauthorized(format!(
                    "unknown SNS message type `{other}`"
                )));
            }
        };
        let version = match required("SignatureVersion")? {
            "1" => SignatureVersion::Sha1,
            "2" => SignatureVersion::Sha256,
            other => {
                return Err(WebhookError::Unauthorized(format!(
                    "unsupported SignatureVersion `{other}`"
                )));
            }
        };
        let confirmation = kind != MessageType::Notification;
        let for_confirmation = |key: &str| {
            if confirmation {
                required(key).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Envelope {
            kind,
            message_id: required("MessageId")?,
            topic_arn: required("TopicArn")?,
            message: required("Message")?,
            timestamp: required("Timestamp")?,
            // A null Subject is an absent one.
            subject: if confirmation { None } else { raw("Subject") },
            subscribe_url: for_confirmation("SubscribeURL")?,
            token: for_confirmation("Token")?,
            version,
            signature: required("Signature")?,
            // Lambda-style spelling, in case a relay reformats the message.
            signing_cert_url: raw("SigningCertURL")
                .or_else(|| raw("SigningCertUrl"))
                .ok_or_else(|| {
                    WebhookError::Unauthorized("SNS message has no SigningCertURL".to_owned())
                })?,
        })
    }

    /// The string SNS signed: `name\nvalue\n` for each field of the message type, in byte order
    /// of the names.
    fn string_to_sign(&self) -> String {
        let fields: Vec<(&str, Option<&str>)> = match self.kind {
            MessageType::Notification => vec![
                ("Message", Some(self.message)),
                ("MessageId", Some(self.message_id)),
                ("Subject", self.subject),
                ("Timestamp", Some(self.timestamp)),
                ("TopicArn", Some(self.topic_arn)),
                ("Type", Some("Notification")),
            ],
            MessageType::SubscriptionConfirmation | MessageType::UnsubscribeConfirmation => vec![
                ("Message", Some(self.message)),
                ("MessageId", Some(self.message_id)),
                ("SubscribeURL", self.subscribe_url),
                ("Timestamp", Some(self.timestamp)),
                ("Token", self.token),
                ("TopicArn", Some(self.topic_arn)),
                (
                    "Type",
                    Some(if self.kind == MessageType::SubscriptionConfirmation {
                        "SubscriptionConfirmation"
                    } else {
                        "UnsubscribeConfirmation"
                    }),
                ),
            ],
        };
        let mut out = String::new();
        for (name, value) in fields {
            if let Some(value) = value {
                out.push_str(name);
                out.push('\n');
                out.push_str(value);
                out.push('\n');
            }
        }
        out
    }
}

/// Checks that `raw` is an https URL on an SNS host (`sns.<region>.amazonaws.com`, or `.com.cn`)
/// with no user info or explicit port; for certificates also a `.pem` path and no query or
/// fragment.
fn sns_url(raw: &str, certificate: bool) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    let refuse = |why: &str| Err(format!("`{raw}` is not an SNS URL: {why}"));
    if url.scheme() != "https" {
        return refuse("not https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("has user info");
    }
    // `Url` drops the scheme's default port, so any port left is a non-standard one.
    if url.port().is_some() {
        return refuse("has a port");
    }
    if !url.domain().is_some_and(is_sns_host) {
        return refuse("host is not sns.<region>.amazonaws.com");
    }
    if certificate {
        if !url.path().ends_with(".pem") {
            return refuse("path does not end in .pem");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return refuse("has a query or fragment");
        }
    }
    Ok(url)
}

/// `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`, exactly.
fn is_sns_host(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        ["sns", region, "amazonaws", "com"] | ["sns", region, "amazonaws", "com", "cn"] => {
            is_region(region)
        }
        _ => false,
    }
}

/// An AWS region name such as `us-east-1`, `cn-north-1` or `us-gov-west-1`.
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .first()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

impl SnsVerifier {
    /// Checks the settings without reading certificate files.
    pub(super) fn check(settings: &SesWebhookSettings) -> Result<(), WebhookConfigError> {
        let key = "webhooks.ses.topic_arns";
        if settings.topic_arns.is_empty() {
            return Err(WebhookConfigError::new(
                key,
                "list at least one SNS topic ARN: SNS signs every AWS account's messages, so \
                 without a list anyone could publish events to Herald",
            ));
        }
        for arn in &settings.topic_arns {
            if !arn.starts_with("arn:aws") || !arn.contains(":sns:") {
                return Err(WebhookConfigError::new(
                    key,
                    format!(
                        "`{arn}` is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn new(
        settings: &SesWebhookSettings,
        dir: &Path,
    ) -> Result<SnsVerifier, WebhookConfigError> {
        Self::check(settings)?;
        let certificates = if settings.certificates.is_empty() {
            let client = reqwest::Client::builder()
                .https_only(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(FETCH_TIMEOUT)
                .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| {
                    WebhookConfigError::new(
                        "webhooks.ses",
                        format!("cannot build the HTTPS client for certificates: {e}"),
                    )
                })?;
            Certificates::Fetched {
                client,
                cache: Mutex::new(HashMap::new()),
            }
        } else {
            let mut certs = Vec::new();
            for path in &settings.certificates {
                let full = dir.join(path);
                let invalid = |m: String| WebhookConfigError::new("webhooks.ses.certificates", m);
                let pem = std::fs::read(&full)
                    .map_err(|e| invalid(format!("{}: {e}", full.display())))?;
                certs.extend(
                    parse_pem(&pem).map_err(|e| invalid(format!("{}: {e}", full.display())))?,
                );
            }
            Certificates::Configured(certs)
        };
        Ok(SnsVerifier {
            topic_arns: settings.topic_arns.clone(),
            certificates,
        })
    }

    pub(super) async fn handle(&self, req: WebhookRequest<'_>) -> Result<Parsed, WebhookError> {
        let obj = parse_object(req.body)?;
        let envelope = Envelope::read(&obj)?;
        if !self.topic_arns.iter().any(|t| t == envelope.topic_arn) {
            return Err(WebhookError::Unauthorized(format!(
                "topic {} is not in webhooks.ses.topic_arns",
                envelope.topic_arn
            )));
        }
        let sent_at = parse_rfc3339(envelope.timestamp).ok_or_else(|| {
            WebhookError::Unauthorized("SNS Timestamp is not RFC 3339".to_owned())
        })?;
        if req.now - sent_at > MAX_AGE {
            return Err(WebhookError::Replay(format!(
                "SNS message from {sent_at} is more than an hour old"
            )));
        }
        if sent_at - req.now > MAX_SKEW {
            return Err(WebhookError::Replay(format!(
                "SNS message from {sent_at} is in the future"
            )));
        }
        let cert_url =
            sns_url(envelope.signing_cert_url, true).map_err(WebhookError::Unauthorized)?;
        let signature = STANDARD
            .decode(envelope.signature.trim())
            .map_err(|_| WebhookError::Unauthorized("SNS Signature is not base64".to_owned()))?;
        self.verify(
            &cert_url,
            envelope.version,
            envelope.string_to_sign().as_bytes(),
            &signature,
            req.now,
        )
        .await?;

        let outcome = match envelope.kind {
            MessageType::SubscriptionConfirmation => {
                // Checked, then returned exactly as AWS signed it.
                let raw = envelope.subscribe_url.unwrap_or_default();
                sns_url(raw, false).map_err(WebhookError::Unauthorized)?;
                Outcome::SubscriptionConfirmation {
                    subscribe_url: raw.to_owned(),
                    topic_arn: envelope.topic_arn.to_owned(),
                }
            }
            MessageType::UnsubscribeConfirmation => Outcome::Ignored,
            MessageType::Notification => {
                super::ses::outcome(envelope.message, envelope.message_id, sent_at)?
            }
        };
        Ok(Parsed {
            outcome,
            replay_key: None,
        })
    }

    async fn verify(
        &self,
        cert_url: &Url,
        version: SignatureVersion,
        message: &[u8],
        signature: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), WebhookError> {
        let cert = match &self.certificates {
            Certificates::Configured(certs) => {
                // Matched by trying each: the configured files are the trust decision, the URL
                // only says where AWS keeps its copy.
                return if certs
                    .iter()
                    .any(|c| c.valid_at(now) && c.verifies(version, message, signature))
                {
                    Ok(())
                } else {
                    Err(WebhookError::Unauthorized(
                        "SNS signature matches no configured certificate valid now".to_owned(),
                    ))
                };
            }
            Certificates::Fetched { client, cache } => {
                let cached = cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(cert_url.as_str())
                    .cloned();
                match cached {
                    Some(cert) => cert,
                    None => {
                        let cert = Arc::new(fetch(client, cert_url).await?);
                        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
                        if cache.len() >= MAX_CACHED_CERTS {
                            cache.clear();
                        }
                        cache.insert(cert_url.to_string(), Arc::clone(&cert));
                        cert
                    }
                }
            }
        };
        if !cert.valid_at(now) {
            return Err(WebhookError::Unauthorized(
                "SNS signing certificate is not valid now".to_owned(),
            ));
        }
        if !cert.verifies(version, message, signature) {
            return Err(WebhookError::Unauthorized(
                "SNS signature does not match".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Fetches and parses a signing certificate. Network trouble and AWS 5xx are
/// [`WebhookError::CertificateFetch`] (SNS will retry); anything else AWS answers, or a file that
/// is not a usable certificate, means the message cannot be authenticated.
async fn fetch(client: &reqwest::Client, url: &Url) -> Result<SigningCert, WebhookError> {
    let transient = |e: reqwest::Error| WebhookError::CertificateFetch(format!("{url}: {e}"));
    let mut response = client.get(url.clone()).send().await.map_err(transient)?;
    let status = response.status();
    if status.is_server_error() {
        return Err(WebhookError::CertificateFetch(format!(
            "{url} answered {status}"
        )));
    }
    if !status.is_success() {
        return Err(WebhookError::Unauthorized(format!(
            "{url} answered {status}"
        )));
    }
    let mut pem = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transient)? {
        if pem.len() + chunk.len() > MAX_CERT_BYTES {
            return Err(WebhookError::Unauthorized(format!(
                "{url} is larger than a certificate"
            )));
        }
        pem.extend_from_slice(&chunk);
    }
    parse_pem(&pem)
        .map_err(|e| WebhookError::Unauthorized(format!("{url}: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| WebhookError::Unauthorized(format!("{url}: no certificate")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_urls_must_be_https_sns_pem() {
        for good in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
            "https://SNS.US-EAST-2.AMAZONAWS.COM/SimpleNotificationService-abc.pem",
            "https://sns.us-east-2.amazonaws.com:443/SimpleNotificationService-abc.pem",
        ] {
            assert!(sns_url(good, true).is_ok(), "{good}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://user:pass@sns.us-east-1.amazonaws.com/x.pem",
            "https://evil.com\\@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://sns.us-east-1.amazonaws.com./x.pem",
            "https://sqs.us-east-1.amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://sns.evil.amazonaws.com/x.pem",
            "https://sns.us-east-1.evil.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.pem?a=b",
            "https://sns.us-east-1.amazonaws.com/x.pem#f",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "https://54.239.28.85/x.pem",
            "file:///etc/passwd.pem",
            "//sns.us-east-1.amazonaws.com/x.pem",
            "",
        ] {
            assert!(sns_url(bad, true).is_err(), "{bad}");
        }
        // A SubscribeURL has a query and no .pem.
        assert!(
            sns_url(
                "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336",
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn regions() {
        for good in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-5",
        ] {
            assert!(is_region(good), "{good}");
        }
        for bad in [
            "",
            "us",
            "us-east",
            "us--1",
            "-us-east-1",
            "us-east-1-",
            "US-east-1",
            "1-us-1",
            "us-east-x",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn string_to_sign_for_confirmations_uses_their_fields() {
        let obj: Object = serde_json::from_str(
            r#"{"Type":"SubscriptionConfirmation","MessageId":"m","Token":"t","TopicArn":"arn",
               "Message":"hi","SubscribeURL":"https://x","Timestamp":"ts","SignatureVersion":"1",
               "Signature":"s","SigningCertURL":"https://c","Subject":"ignored"}"#,
        )
        .unwrap();
        let env = Envelope::read(&obj).unwrap();
        assert_eq!(
            env.string_to_sign(),
            "Message\nhi\nMessageId\nm\nSubscribeURL\nhttps://x\nTimestamp\nts\nToken\nt\nTopicArn\narn\nType\nSubscriptionConfirmation\n"
        );
    }

    #[test]
    fn envelope_without_signing_fields_is_unauthorized() {
        for body in [
            r#"{}"#,
            r#"{"Type":"Notification"}"#,
            r#"{"Type":"Other","MessageId":"m","TopicArn":"a","Message":"","Timestamp":"t","SignatureVersion":"1","Signature":"s","SigningCertURL":"u"}"#,
            r#"{"Type":"Notification","MessageId":"m","TopicArn":"a","Message":"","Timestamp":"t","SignatureVersion":"3","Signature":"s","SigningCertURL":"u"}"#,
            r#"{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"a","Message":"","Timestamp":"t","SignatureVersion":"1","Signature":"s","SigningCertURL":"u"}"#,
        ] {
            let obj: Object = serde_json::from_str(body).unwrap();
            assert!(
                matches!(Envelope::read(&obj), Err(WebhookError::Unauthorized(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn topic_list_is_required() {
        let settings = |arns: &[&str]| SesWebhookSettings {
            topic_arns: arns.iter().map(|s| (*s).to_owned()).collect(),
            certificates: vec![],
        };
        assert!(SnsVerifier::check(&settings(&[])).is_err());
        assert!(SnsVerifier::check(&settings(&["MyTopic"])).is_err());
        assert!(SnsVerifier::check(&settings(&["arn:aws:sns:us-east-1:123456789012:ses"])).is_ok());
        assert!(
            SnsVerifier::check(&settings(&["arn:aws-cn:sns:cn-north-1:123456789012:ses"])).is_ok()
        );
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        assert!(parse_pem(b"").is_err());
        assert!(
            parse_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err()
        );
        assert!(
            parse_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
