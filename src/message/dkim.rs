//! DKIM signing of built messages (RFC 6376), for mail Herald hands to SMTP relays.
//!
//! lettre does the cryptography; this module fixes the choices that lettre's defaults get wrong
//! (rust-ecosystem.md §2.1): canonicalization is relaxed/relaxed (lettre's default
//! simple/relaxed breaks on any relay that refolds a header), and the signed headers never
//! include `Content-Type`, which lettre writes after signing on multipart messages so the
//! signature would never verify. Keys are RSA in PKCS#1 PEM or Ed25519 as the base64 of the
//! 32-byte seed; a PKCS#8 key (OpenSSL's default output) is refused with the command that
//! converts it, because lettre cannot read it (lettre/lettre#926).

use std::fmt;
use std::path::Path;

use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey, dkim_sign,
};
use lettre::message::header::HeaderName;

use super::BuiltMessage;

/// Headers covered by the signature. A listed header that a message lacks (transactional mail
/// has no `List-Unsubscribe`) is signed as absent, so it cannot be added in transit either.
pub const SIGNED_HEADERS: [&str; 8] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Converts a PKCS#8 RSA key into the PKCS#1 form lettre reads.
const RSA_CONVERSION: &str = "openssl rsa -in KEY -out KEY.rsa -traditional";
/// Extracts the base64 Ed25519 seed from a PKCS#8 Ed25519 key (the seed is the DER's last 32
/// bytes).
const ED25519_CONVERSION: &str = "openssl pkey -in KEY -outform DER | tail -c 32 | base64";

/// Why a DKIM key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("cannot read DKIM key {path}: {source}")]
    Read {
        /// The file as configured (resolved against the project directory).
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is PKCS#8 (`BEGIN PRIVATE KEY`), which lettre cannot read.
    #[error(
        "DKIM key {path} is a PKCS#8 key (BEGIN PRIVATE KEY); Herald needs an RSA key in PKCS#1 \
         form (BEGIN RSA PRIVATE KEY) — convert it with: {RSA_CONVERSION} — or, for an Ed25519 \
         key, the base64 of its 32-byte seed: {ED25519_CONVERSION}"
    )]
    Pkcs8 {
        /// The key file.
        path: String,
    },
    /// A PEM block of a kind we cannot use (encrypted, EC, OpenSSH, a certificate, …).
    #[error(
        "DKIM key {path} is a PEM `{label}` block; expected BEGIN RSA PRIVATE KEY (PKCS#1) or a \
         base64 Ed25519 seed (an encrypted key must be decrypted first: {RSA_CONVERSION})"
    )]
    UnsupportedPem {
        /// The key file.
        path: String,
        /// The PEM label after `BEGIN `.
        label: String,
    },
    /// The key text could not be parsed as the kind it claims to be.
    #[error("DKIM key {path} is not a valid {algorithm} key: {reason}")]
    Invalid {
        /// The key file.
        path: String,
        /// `RSA (PKCS#1)` or `Ed25519 seed`.
        algorithm: &'static str,
        /// The parser's explanation.
        reason: String,
    },
    /// The signing domain or selector is unusable in a `DKIM-Signature` header.
    #[error("invalid DKIM {field} {value:?}: {reason}")]
    Setting {
        /// `domain` or `selector`.
        field: &'static str,
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Signs messages for one domain and selector. Cheap to share behind an `Arc`.
pub struct DkimSigner {
    config: DkimConfig,
    domain: String,
    selector: String,
    algorithm: DkimSigningAlgorithm,
}

impl fmt::Debug for DkimSigner {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm.to_string())
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// Reads the key from `path` (see [`DkimSigner::from_key`]).
    pub fn from_file(domain: &str, selector: &str, path: &Path) -> Result<DkimSigner, DkimError> {
        let label = path.display().to_string();
        let key = std::fs::read_to_string(path).map_err(|source| DkimError::Read {
            path: label.clone(),
            source,
        })?;
        DkimSigner::from_key(domain, selector, &key, &label)
    }

    /// A signer for `domain`/`selector` from the key text: an RSA key in PKCS#1 PEM, or an
    /// Ed25519 key as the base64 of its 32-byte seed. `source` names the key in errors.
    pub fn from_key(
        domain: &str,
        selector: &str,
        key: &str,
        source: &str,
    ) -> Result<DkimSigner, DkimError> {
        check_tag_value("domain", domain)?;
        check_tag_value("selector", selector)?;
        let key = key.trim();
        let algorithm = match pem_label(key) {
            Some("RSA PRIVATE KEY") => DkimSigningAlgorithm::Rsa,
            Some("PRIVATE KEY") => {
                return Err(DkimError::Pkcs8 {
                    path: source.to_owned(),
                });
            }
            Some(label) => {
                return Err(DkimError::UnsupportedPem {
                    path: source.to_owned(),
                    label: label.to_owned(),
                });
            }
            None => DkimSigningAlgorithm::Ed25519,
        };
        let signing_key =
            DkimSigningKey::new(key, algorithm).map_err(|err| DkimError::Invalid {
                path: source.to_owned(),
                algorithm: match algorithm {
                    DkimSigningAlgorithm::Rsa => "RSA (PKCS#1)",
                    DkimSigningAlgorithm::Ed25519 => "Ed25519 seed",
                },
                reason: err.to_string(),
            })?;
        let config = DkimConfig::new(
            selector.to_owned(),
            domain.to_owned(),
            signing_key,
            SIGNED_HEADERS
                .iter()
                .map(|name| HeaderName::new_from_ascii_str(name))
                .collect(),
            DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            },
        );
        Ok(DkimSigner {
            config,
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            algorithm,
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The message's raw bytes with a `DKIM-Signature` header added. The body and every other
    /// header are byte-for-byte those of `msg.raw` (the MIME boundaries were fixed when the
    /// message was built).
    pub fn sign(&self, msg: &BuiltMessage) -> Vec<u8> {
        let mut message = msg.mime.clone();
        dkim_sign(&mut message, &self.config);
        message.formatted()
    }
}

/// The label of the first PEM block (`RSA PRIVATE KEY` for `-----BEGIN RSA PRIVATE KEY-----`).
fn pem_label(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("-----BEGIN ")?;
    rest.split_once("-----").map(|(label, _)| label)
}

/// `d=` and `s=` values go into the signature header verbatim: keep them to DNS label syntax.
fn check_tag_value(field: &'static str, value: &str) -> Result<(), DkimError> {
    let invalid = |reason| DkimError::Setting {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(invalid(
            "only letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_labels_are_read_from_the_first_line() {
        assert_eq!(
            pem_label("-----BEGIN RSA PRIVATE KEY-----\nMII…"),
            Some("RSA PRIVATE KEY")
        );
        assert_eq!(
            pem_label("-----BEGIN PRIVATE KEY-----\nMII…"),
            Some("PRIVATE KEY")
        );
        assert_eq!(
            pem_label("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="),
            None
        );
    }

    #[test]
    fn pkcs8_keys_are_refused_with_the_conversion_command() {
        let err = DkimSigner::from_key(
            "shop.example",
            "herald",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n",
            "dkim.pem",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("dkim.pem"), "{text}");
        assert!(text.contains(RSA_CONVERSION), "{text}");
        assert!(text.contains(ED25519_CONVERSION), "{text}");
    }

    #[test]
    fn bad_keys_and_settings_are_explained() {
        let err = DkimSigner::from_key("shop.example", "herald", "not base64!", "k").unwrap_err();
        assert!(matches!(err, DkimError::Invalid { .. }), "{err}");
        let err = DkimSigner::from_key(
            "shop.example",
            "herald",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----",
            "k",
        )
        .unwrap_err();
        assert!(err.to_string().contains("EC PRIVATE KEY"), "{err}");
        let seed = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
        let err = DkimSigner::from_key("shop.example; x=1", "herald", seed, "k").unwrap_err();
        assert!(
            matches!(
                err,
                DkimError::Setting {
                    field: "domain",
                    ..
                }
            ),
            "{err}"
        );
        assert!(DkimSigner::from_key("shop.example", "herald", seed, "k").is_ok());
    }
}
