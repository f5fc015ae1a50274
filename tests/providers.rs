//! Each REST provider against an HTTP stand-in (wiremock on 127.0.0.1): the exact documented
//! request (method, path, authentication, body fields) and the class of every kind of answer —
//! success, rate limit, server error, recipient rejection, other rejection, setup problem,
//! used-up quota, no answer at all.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, TimeZone, Utc};
use herald::clock::{Clock, ManualClock};
use herald::config::Secret;
use herald::message::{self, BuiltMessage, OutgoingEmail};
use herald::transport::http::HttpSettings;
use herald::transport::mailgun::{Mailgun, MailgunConfig};
use herald::transport::postmark::{Postmark, PostmarkConfig};
use herald::transport::resend::{Resend, ResendConfig};
use herald::transport::sendgrid::{Sendgrid, SendgridConfig};
use herald::transport::ses::{Ses, SesConfig};
use herald::transport::{ErrorClass, SendError, Transport};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const MESSAGE_ID: &str = "0190a3c2-7d4e-7b1a-9f3e-000000000001";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
}

fn clock() -> Clock {
    Clock::Manual(ManualClock::new(now()))
}

fn http(server: &MockServer) -> HttpSettings {
    HttpSettings {
        base_url: server.uri(),
        timeout: Duration::from_secs(5),
    }
}

fn built() -> BuiltMessage {
    message::build(&OutgoingEmail {
        message_id: MESSAGE_ID.to_owned(),
        from: "Acme Shop <hello@shop.example>".to_owned(),
        to: "Ana Lima <ana@customer.example>".to_owned(),
        subject: "Your cart misses you".to_owned(),
        html: "<p>Hi Ana</p>".to_owned(),
        text: "Hi Ana".to_owned(),
        headers: vec![
            (
                "List-Unsubscribe".to_owned(),
                "<https://herald.example/u/tok>".to_owned(),
            ),
            (
                "List-Unsubscribe-Post".to_owned(),
                "List-Unsubscribe=One-Click".to_owned(),
            ),
        ],
        date: now(),
    })
    .unwrap()
}

/// The one request the stand-in received.
async fn only_request(server: &MockServer) -> wiremock::Request {
    let mut requests = server.received_requests().await.unwrap_or_default();
    assert_eq!(requests.len(), 1, "expected exactly one request");
    requests.remove(0)
}

fn header<'a>(request: &'a wiremock::Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing"))
}

/// Answers every request with `response`, replacing earlier answers.
async fn answer(server: &MockServer, response: ResponseTemplate) {
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(server)
        .await;
}

/// What a test expects of a failed send.
#[derive(Debug)]
enum Expect {
    /// Transient, with this `retry_after`.
    Transient(Option<Duration>),
    /// Permanent; a hard bounce with this enhanced code, or not one.
    Permanent(Option<&'static str>),
    /// Transient and deferred until this instant.
    Deferred(DateTime<Utc>),
    /// The outcome is unknown.
    Unknown,
}

fn check(case: &str, error: &SendError, expect: &Expect) {
    match expect {
        Expect::Transient(retry_after) => {
            assert_eq!(error.class, ErrorClass::Transient, "{case}: {error}");
            assert!(
                !error.after_data && error.deferred_until.is_none(),
                "{case}: {error:?}"
            );
            assert_eq!(error.retry_after, *retry_after, "{case}: {error}");
        }
        Expect::Permanent(hard_bounce) => {
            assert_eq!(error.class, ErrorClass::Permanent, "{case}: {error}");
            assert_eq!(
                error.is_hard_bounce(),
                hard_bounce.is_some(),
                "{case}: {error:?}"
            );
            if let Some(code) = hard_bounce {
                assert_eq!(error.enhanced.as_deref(), Some(*code), "{case}");
            }
        }
        Expect::Deferred(until) => {
            assert_eq!(error.class, ErrorClass::Transient, "{case}: {error}");
            assert_eq!(error.deferred_until, Some(*until), "{case}: {error:?}");
        }
        Expect::Unknown => assert!(error.after_data, "{case}: {error:?}"),
    }
}

/// Runs each `(case, response, expectation)` against `transport` on `server`.
async fn error_classes(
    server: &MockServer,
    transport: &Transport,
    cases: Vec<(&str, ResponseTemplate, Expect)>,
) {
    for (case, response, expect) in cases {
        answer(server, response).await;
        let error = transport
            .send(&built())
            .await
            .expect_err(&format!("{case}: expected an error"));
        assert!(error.message.contains(transport.name()), "{case}: {error}");
        check(case, &error, &expect);
    }
}

fn json_response(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

fn postmark(server: &MockServer, clock: Clock) -> Transport {
    let config = PostmarkConfig {
        token: Secret::new("server-token"),
        message_stream: Some("broadcast".to_owned()),
        http: http(server),
    };
    Transport::Postmark(Postmark::new("pm", config, clock).unwrap())
}

#[tokio::test]
async fn postmark_sends_the_documented_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/email"))
        .respond_with(json_response(
            200,
            json!({"To": "ana@customer.example", "SubmittedAt": "2026-11-28T10:00:00Z",
                   "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817", "ErrorCode": 0,
                   "Message": "OK"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let transport = postmark(&server, clock());
    let receipt = transport.send(&built()).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("b7bc2f4a-e38e-4336-af7d-e6c392c2f817")
    );

    let request = only_request(&server).await;
    assert_eq!(header(&request, "x-postmark-server-token"), "server-token");
    assert_eq!(header(&request, "accept"), "application/json");
    assert_eq!(header(&request, "content-type"), "application/json");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({
            "From": "Acme Shop <hello@shop.example>",
            "To": "Ana Lima <ana@customer.example>",
            "Subject": "Your cart misses you",
            "HtmlBody": "<p>Hi Ana</p>",
            "TextBody": "Hi Ana",
            "Headers": [
                {"Name": "List-Unsubscribe", "Value": "<https://herald.example/u/tok>"},
                {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
                {"Name": "X-Herald-Message-Id", "Value": MESSAGE_ID},
            ],
            "Metadata": {"herald_message_id": MESSAGE_ID},
            "MessageStream": "broadcast",
        })
    );
}

#[tokio::test]
async fn postmark_error_classes() {
    let server = MockServer::start().await;
    let transport = postmark(&server, clock());
    let error = |code: i64, message: &str| json!({"ErrorCode": code, "Message": message});
    error_classes(
        &server,
        &transport,
        vec![
            (
                "inactive recipient",
                json_response(
                    422,
                    error(
                        406,
                        "You tried to send to recipient(s) that have been marked as inactive.",
                    ),
                ),
                Expect::Permanent(Some("5.1.1")),
            ),
            (
                "invalid To address",
                json_response(422, error(300, "Invalid 'To' address: 'ana@'.")),
                Expect::Permanent(Some("5.1.3")),
            ),
            (
                "other invalid request",
                json_response(
                    422,
                    error(300, "Provide either email TextBody or HtmlBody or both."),
                ),
                Expect::Permanent(None),
            ),
            (
                "sender signature not confirmed",
                json_response(422, error(401, "Sender signature not confirmed")),
                Expect::Transient(None),
            ),
            (
                "bad token",
                json_response(401, error(10, "Bad or missing API token")),
                Expect::Transient(None),
            ),
            (
                "rate limit",
                json_response(429, error(429, "Rate limit exceeded"))
                    .insert_header("Retry-After", "20"),
                Expect::Transient(Some(Duration::from_secs(20))),
            ),
            (
                "server error",
                json_response(500, error(0, "Internal Server Error")),
                Expect::Transient(None),
            ),
            (
                "maintenance",
                ResponseTemplate::new(503),
                Expect::Transient(None),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn no_connection_is_transient_but_no_answer_is_an_unknown_outcome() {
    // Nothing listens on a port that was bound and released.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = PostmarkConfig {
        token: Secret::new("t"),
        message_stream: None,
        http: HttpSettings {
            base_url: format!("http://{addr}"),
            timeout: Duration::from_secs(5),
        },
    };
    let transport = Transport::Postmark(Postmark::new("pm", config, clock()).unwrap());
    let error = transport.send(&built()).await.unwrap_err();
    check("connection refused", &error, &Expect::Transient(None));

    // The request arrives but the answer does not: the provider may have sent the message.
    let server = MockServer::start().await;
    answer(
        &server,
        ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
    )
    .await;
    let quick = |base_url: String| HttpSettings {
        base_url,
        timeout: Duration::from_millis(300),
    };
    let config = PostmarkConfig {
        token: Secret::new("t"),
        message_stream: None,
        http: quick(server.uri()),
    };
    let transport = Transport::Postmark(Postmark::new("pm", config, clock()).unwrap());
    let error = transport.send(&built()).await.unwrap_err();
    check("timeout", &error, &Expect::Unknown);
    assert!(error.message.contains("unknown"), "{error}");

    // Resend de-duplicates by idempotency key, so the same case is a plain retry.
    let config = ResendConfig {
        api_key: Secret::new("re_key"),
        http: quick(server.uri()),
    };
    let transport = Transport::Resend(Resend::new("re", config, clock()).unwrap());
    let error = transport.send(&built()).await.unwrap_err();
    check(
        "timeout with idempotency key",
        &error,
        &Expect::Transient(None),
    );
}

fn sendgrid(server: &MockServer, clock: Clock) -> Transport {
    let config = SendgridConfig {
        api_key: Secret::new("SG.key"),
        http: http(server),
    };
    Transport::Sendgrid(Sendgrid::new("sg", config, clock).unwrap())
}

#[tokio::test]
async fn sendgrid_sends_the_documented_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(202).insert_header("X-Message-Id", "sg-id-1"))
        .expect(1)
        .mount(&server)
        .await;
    let receipt = sendgrid(&server, clock()).send(&built()).await.unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("sg-id-1"));

    let request = only_request(&server).await;
    assert_eq!(header(&request, "authorization"), "Bearer SG.key");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({
            "personalizations": [{"to": [{"email": "ana@customer.example", "name": "Ana Lima"}]}],
            "from": {"email": "hello@shop.example", "name": "Acme Shop"},
            "subject": "Your cart misses you",
            "content": [
                {"type": "text/plain", "value": "Hi Ana"},
                {"type": "text/html", "value": "<p>Hi Ana</p>"},
            ],
            "headers": {
                "List-Unsubscribe": "<https://herald.example/u/tok>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "X-Herald-Message-Id": MESSAGE_ID,
            },
            "custom_args": {"herald_message_id": MESSAGE_ID},
        })
    );
}

#[tokio::test]
async fn sendgrid_error_classes() {
    let server = MockServer::start().await;
    let transport = sendgrid(&server, clock());
    let errors = |field: &str, message: &str| json!({"errors": [{"field": field, "message": message, "help": null}]});
    let reset = (now().timestamp() + 42).to_string();
    error_classes(
        &server,
        &transport,
        vec![
            (
                "invalid recipient",
                json_response(
                    400,
                    errors(
                        "personalizations.0.to.0.email",
                        "Does not contain a valid address.",
                    ),
                ),
                Expect::Permanent(Some("5.1.3")),
            ),
            (
                "other bad request",
                json_response(400, errors("subject", "The subject is required.")),
                Expect::Permanent(None),
            ),
            (
                "unverified sender",
                json_response(
                    403,
                    errors(
                        "from",
                        "The from address does not match a verified Sender Identity.",
                    ),
                ),
                Expect::Transient(None),
            ),
            (
                "rate limit",
                json_response(429, errors("", "too many requests"))
                    .insert_header("X-RateLimit-Reset", reset.as_str()),
                Expect::Transient(Some(Duration::from_secs(42))),
            ),
            (
                "server error",
                ResponseTemplate::new(500),
                Expect::Transient(None),
            ),
        ],
    )
    .await;
}

fn mailgun(server: &MockServer, clock: Clock) -> Transport {
    let config = MailgunConfig {
        api_key: Secret::new("key-123"),
        domain: "mg.shop.example".to_owned(),
        http: http(server),
    };
    Transport::Mailgun(Mailgun::new("mg", config, clock).unwrap())
}

#[tokio::test]
async fn mailgun_sends_the_documented_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mg.shop.example/messages"))
        .respond_with(json_response(
            200,
            json!({"id": "<20261128100000.1.ABC@mg.shop.example>", "message": "Queued. Thank you."}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let receipt = mailgun(&server, clock()).send(&built()).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("20261128100000.1.ABC@mg.shop.example")
    );

    let request = only_request(&server).await;
    assert_eq!(
        header(&request, "authorization"),
        format!("Basic {}", BASE64.encode("api:key-123"))
    );
    assert_eq!(
        header(&request, "content-type"),
        "application/x-www-form-urlencoded"
    );
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("from", "Acme Shop <hello@shop.example>"),
        ("to", "Ana Lima <ana@customer.example>"),
        ("subject", "Your cart misses you"),
        ("html", "<p>Hi Ana</p>"),
        ("text", "Hi Ana"),
        ("h:List-Unsubscribe", "<https://herald.example/u/tok>"),
        ("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("h:X-Herald-Message-Id", MESSAGE_ID),
        ("v:herald-message-id", MESSAGE_ID),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(fields, expected);
}

#[tokio::test]
async fn mailgun_error_classes() {
    let server = MockServer::start().await;
    let transport = mailgun(&server, clock());
    let message = |text: &str| json!({ "message": text });
    error_classes(
        &server,
        &transport,
        vec![
            (
                "invalid recipient",
                json_response(
                    400,
                    message("to parameter is not a valid address. please check documentation"),
                ),
                Expect::Permanent(Some("5.1.3")),
            ),
            (
                "other bad request",
                json_response(
                    400,
                    message("Need at least one of 'text' or 'html' parameters specified"),
                ),
                Expect::Permanent(None),
            ),
            (
                "bad key",
                ResponseTemplate::new(401).set_body_string("Forbidden"),
                Expect::Transient(None),
            ),
            (
                "unknown domain",
                json_response(404, message("Domain not found: mg.shop.example")),
                Expect::Transient(None),
            ),
            (
                "rate limit",
                json_response(429, message("Too many requests")).insert_header("Retry-After", "5"),
                Expect::Transient(Some(Duration::from_secs(5))),
            ),
            (
                "server error",
                ResponseTemplate::new(502),
                Expect::Transient(None),
            ),
        ],
    )
    .await;
}

fn ses(server: &MockServer, clock: Clock) -> Transport {
    let config = SesConfig {
        region: "eu-west-1".to_owned(),
        access_key_id: "AKIDEXAMPLE".to_owned(),
        secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        configuration_set: Some("herald-events".to_owned()),
        http: http(server),
    };
    Transport::Ses(Ses::new("ses", config, clock).unwrap())
}

/// SigV4 recomputed from the received request, independently of the transport's signer, the
/// way SES checks it.
fn expected_signature(request: &wiremock::Request) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    fn mac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let canonical = format!(
        "POST\n/v2/email/outbound-emails\n\ncontent-type:{}\nhost:{}\nx-amz-date:{}\n\n\
         content-type;host;x-amz-date\n{}",
        header(request, "content-type"),
        header(request, "host"),
        header(request, "x-amz-date"),
        hex(&Sha256::digest(&request.body))
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n20261128T100000Z\n20261128/eu-west-1/ses/aws4_request\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = ["eu-west-1", "ses", "aws4_request"].iter().fold(
        mac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20261128"),
        |key, part| mac(&key, part),
    );
    hex(&mac(&key, &to_sign))
}

#[tokio::test]
async fn ses_sends_the_documented_signed_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/email/outbound-emails"))
        .respond_with(json_response(200, json!({"MessageId": "0102018c-ses-id"})))
        .expect(1)
        .mount(&server)
        .await;
    let msg = built();
    let receipt = ses(&server, clock()).send(&msg).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("0102018c-ses-id")
    );

    let request = only_request(&server).await;
    assert_eq!(header(&request, "x-amz-date"), "20261128T100000Z");
    assert_eq!(header(&request, "content-type"), "application/json");
    assert_eq!(
        header(&request, "authorization"),
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/eu-west-1/ses/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature={}",
            expected_signature(&request)
        )
    );
    let mut body: Value = serde_json::from_slice(&request.body).unwrap();
    let raw = BASE64
        .decode(body["Content"]["Raw"]["Data"].as_str().unwrap())
        .unwrap();
    // Our own MIME message, byte for byte: SES keeps our headers.
    assert_eq!(raw, msg.raw);
    body["Content"]["Raw"]["Data"].take();
    assert_eq!(
        body,
        json!({
            "FromEmailAddress": "hello@shop.example",
            "Destination": {"ToAddresses": ["ana@customer.example"]},
            "Content": {"Raw": {"Data": null}},
            "EmailTags": [{"Name": "herald_message_id", "Value": MESSAGE_ID}],
            "ConfigurationSetName": "herald-events",
        })
    );
}

#[tokio::test]
async fn ses_error_classes() {
    let server = MockServer::start().await;
    let transport = ses(&server, clock());
    let aws = |status: u16, kind: &str, message: &str| {
        json_response(status, json!({ "message": message })).insert_header(
            "x-amzn-ErrorType",
            format!("{kind}:http://internal.amazon.com/coral/com.amazonaws.sesv2/").as_str(),
        )
    };
    error_classes(
        &server,
        &transport,
        vec![
            (
                "illegal address",
                aws(400, "MessageRejected", "Illegal address"),
                Expect::Permanent(Some("5.1.3")),
            ),
            (
                "virus",
                aws(400, "MessageRejected", "Message contains a virus"),
                Expect::Permanent(None),
            ),
            (
                "sandbox",
                aws(400, "MessageRejected", "Email address is not verified. The following identities failed the check in region EU-WEST-1: ana@customer.example"),
                Expect::Transient(None),
            ),
            (
                "sending paused",
                aws(400, "SendingPausedException", "Sending is paused for this account."),
                Expect::Transient(None),
            ),
            (
                "throttled",
                aws(429, "TooManyRequestsException", "Maximum sending rate exceeded."),
                Expect::Transient(None),
            ),
            (
                "daily quota",
                aws(400, "LimitExceededException", "Daily message quota exceeded."),
                Expect::Deferred(now() + chrono::TimeDelta::hours(1)),
            ),
            (
                "bad signature",
                aws(403, "InvalidSignatureException", "The request signature we calculated does not match"),
                Expect::Transient(None),
            ),
            (
                "server error",
                aws(500, "InternalFailure", "Internal failure"),
                Expect::Transient(None),
            ),
        ],
    )
    .await;
}

fn resend(server: &MockServer, clock: Clock) -> Transport {
    let config = ResendConfig {
        api_key: Secret::new("re_key"),
        http: http(server),
    };
    Transport::Resend(Resend::new("re", config, clock).unwrap())
}

#[tokio::test]
async fn resend_sends_the_documented_request_with_an_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(json_response(
            200,
            json!({"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let receipt = resend(&server, clock()).send(&built()).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794")
    );

    let request = only_request(&server).await;
    assert_eq!(header(&request, "authorization"), "Bearer re_key");
    assert_eq!(header(&request, "idempotency-key"), MESSAGE_ID);
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({
            "from": "Acme Shop <hello@shop.example>",
            "to": ["Ana Lima <ana@customer.example>"],
            "subject": "Your cart misses you",
            "html": "<p>Hi Ana</p>",
            "text": "Hi Ana",
            "headers": {
                "List-Unsubscribe": "<https://herald.example/u/tok>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "X-Herald-Message-Id": MESSAGE_ID,
            },
            "tags": [{"name": "herald_message_id", "value": MESSAGE_ID}],
        })
    );
}

#[tokio::test]
async fn resend_error_classes() {
    let server = MockServer::start().await;
    let transport = resend(&server, clock());
    let error = |status: u16, name: &str, message: &str| {
        json_response(
            status,
            json!({"statusCode": status, "name": name, "message": message}),
        )
    };
    let midnight = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap();
    let month = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    error_classes(
        &server,
        &transport,
        vec![
            (
                "daily quota",
                error(429, "daily_quota_exceeded", "You have reached your daily email sending quota."),
                Expect::Deferred(midnight),
            ),
            (
                "daily quota, later Retry-After",
                error(429, "daily_quota_exceeded", "quota")
                    .insert_header("Retry-After", "86400"),
                Expect::Deferred(now() + chrono::TimeDelta::days(1)),
            ),
            (
                "monthly quota",
                error(429, "monthly_quota_exceeded", "You have reached your monthly email sending quota."),
                Expect::Deferred(month),
            ),
            (
                "rate limit",
                error(429, "rate_limit_exceeded", "Too many requests.")
                    .insert_header("Retry-After", "1"),
                Expect::Transient(Some(Duration::from_secs(1))),
            ),
            (
                "invalid recipient",
                error(422, "validation_error", "Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format."),
                Expect::Permanent(Some("5.1.3")),
            ),
            (
                "other validation error",
                error(422, "validation_error", "Invalid `from` field."),
                Expect::Permanent(None),
            ),
            (
                "unverified domain",
                error(403, "validation_error", "The shop.example domain is not verified."),
                Expect::Transient(None),
            ),
            (
                "concurrent idempotent request",
                error(409, "concurrent_idempotent_requests", "Same idempotency key used while original request is still in progress."),
                Expect::Transient(None),
            ),
            (
                "key reused with another body",
                error(409, "invalid_idempotent_request", "Same idempotency key used with a different request payload."),
                Expect::Unknown,
            ),
            (
                "server error",
                error(500, "internal_server_error", "Unexpected error."),
                Expect::Transient(None),
            ),
        ],
    )
    .await;
}
