//! AWS Signature Version 4 for one request, as specified in the AWS General Reference
//! ("Create a signed AWS API request"): canonical request → string to sign → signature with a
//! key derived from the secret, date, region and service. Written out here instead of pulling
//! in the AWS SDK's signing stack for the one call SES needs; the tests check it against the
//! published `aws-sig-v4-test-suite` vectors.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::transport::http::hex;

/// The request parts that are signed.
pub(crate) struct SignedRequest<'a> {
    /// `GET`, `POST`, …
    pub(crate) method: &'a str,
    /// The URI-encoded path (`/v2/email/outbound-emails`).
    pub(crate) path: &'a str,
    /// The canonical query string (sorted, encoded); empty for none.
    pub(crate) query: &'a str,
    /// Headers to sign, names in lower case. Must include `host` and `x-amz-date`.
    pub(crate) headers: &'a [(&'a str, &'a str)],
    /// The request body.
    pub(crate) payload: &'a [u8],
}

/// Who signs, for which region and service.
pub(crate) struct Scope<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
}

/// `20150830T123600Z`: the `X-Amz-Date` header value for `at`.
pub(crate) fn amz_date(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The `Authorization` header value for `request` signed at `at`.
pub(crate) fn authorization(
    scope: &Scope<'_>,
    at: DateTime<Utc>,
    request: &SignedRequest<'_>,
) -> String {
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), canonical_value(value)))
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        request.path,
        request.query,
        hex(&Sha256::digest(request.payload))
    );

    let date = at.format("%Y%m%d").to_string();
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{credential_scope}\n{}",
        amz_date(at),
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = [scope.region, scope.service, "aws4_request"].iter().fold(
        hmac(
            format!("AWS4{}", scope.secret_access_key).as_bytes(),
            date.as_bytes(),
        ),
        |key, part| hmac(&key, part.as_bytes()),
    );
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        scope.access_key_id
    )
}

/// Header values are trimmed and inner runs of spaces collapsed to one.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// The credentials, time and scope of AWS's `aws-sig-v4-test-suite`.
    fn suite(method: &str, payload: &[u8]) -> String {
        let at = Utc.with_ymd_and_hms(2015, 8, 30, 12, 36, 0).unwrap();
        let date = amz_date(at);
        authorization(
            &Scope {
                access_key_id: "AKIDEXAMPLE",
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                region: "us-east-1",
                service: "service",
            },
            at,
            &SignedRequest {
                method,
                path: "/",
                query: "",
                headers: &[("Host", "example.amazonaws.com"), ("X-Amz-Date", &date)],
                payload,
            },
        )
    }

    #[test]
    fn get_vanilla_matches_the_aws_test_suite() {
        assert_eq!(
            suite("GET", b""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn post_vanilla_matches_the_aws_test_suite() {
        assert!(
            suite("POST", b"").ends_with(
                "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            ),
            "{}",
            suite("POST", b"")
        );
    }

    #[test]
    fn header_values_are_canonicalized() {
        assert_eq!(canonical_value("  a   b  c "), "a b c");
    }
}
