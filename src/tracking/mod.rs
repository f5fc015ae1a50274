//! Signed tokens for links Herald puts in mail (unsubscribe now; open/click tracking later) and
//! the endpoints that receive them. A token carries its payload in the clear plus an HMAC, so it
//! cannot be forged or altered, and needs no database lookup to verify.

pub mod hits;
pub mod links;
pub mod unsubscribe;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Signs and verifies tokens with the installation's secret.
#[derive(Clone)]
pub struct Tokens {
    mac: Hmac<Sha256>,
}

/// Bytes of the truncated HMAC-SHA256 tag (128 bits).
const TAG_LEN: usize = 16;

impl Tokens {
    pub fn new(secret: &str) -> Result<Tokens, hmac::digest::InvalidLength> {
        Ok(Tokens {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())?,
        })
    }

    fn tag(&self, purpose: &str, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac.finalize().into_bytes()[..TAG_LEN].to_vec()
    }

    /// A URL-safe token binding `payload` to `purpose` (e.g. "unsubscribe").
    pub fn sign(&self, purpose: &str, payload: &str) -> String {
        let tag = self.tag(purpose, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The payload of a valid token for `purpose`, or `None` for anything forged or malformed.
    pub fn verify(&self, purpose: &str, token: &str) -> Option<String> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let expected = self.tag(purpose, &payload);
        if subtle::ConstantTimeEq::ct_eq(expected.as_slice(), tag.as_slice()).into() {
            String::from_utf8(payload).ok()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let t = Tokens::new("secret").unwrap();
        let token = t.sign("unsubscribe", "c-1 m-1");
        assert_eq!(t.verify("unsubscribe", &token).as_deref(), Some("c-1 m-1"));
        assert_eq!(t.verify("click", &token), None);
        assert_eq!(
            Tokens::new("other").unwrap().verify("unsubscribe", &token),
            None
        );
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("c-2 m-1"),
            token.split_once('.').unwrap().1
        );
        assert_eq!(t.verify("unsubscribe", &forged), None);
        assert_eq!(t.verify("unsubscribe", "garbage"), None);
    }
}
