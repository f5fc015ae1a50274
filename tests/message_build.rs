//! MIME building: what `message::build` produces must parse back to what we put in.

use chrono::{TimeZone, Utc};
use herald::message::{self, MessageError, OutgoingEmail};
use mail_parser::{MessageParser, MimeHeaders};

fn email() -> OutgoingEmail {
    OutgoingEmail {
        message_id: "0190a3c2-7d4e-7b1a-9f3e-2c4d5e6f7a8b".to_owned(),
        from: "Acme Shop <hello@shop.example>".to_owned(),
        to: "Jane Doe <jane@customer.example>".to_owned(),
        subject: "Your cart misses you — 10 % off".to_owned(),
        html: "<p>Hello <b>Jane</b>, <a href=\"https://shop.example/cart\">return to cart</a></p>"
            .to_owned(),
        text: "Hello Jane,\n.dot-led line\nReturn to cart: https://shop.example/cart".to_owned(),
        headers: vec![],
        date: Utc.with_ymd_and_hms(2026, 11, 28, 9, 30, 15).unwrap(),
    }
}

#[test]
fn builds_multipart_alternative_with_identity_headers() {
    let built = message::build(&email()).unwrap();
    assert_eq!(built.message_id, email().message_id);
    assert_eq!(
        built.envelope.from().map(|a| a.to_string()).as_deref(),
        Some("hello@shop.example")
    );
    let to: Vec<String> = built.envelope.to().iter().map(|a| a.to_string()).collect();
    assert_eq!(to, ["jane@customer.example"]);

    let parsed = MessageParser::default().parse(&built.raw).unwrap();
    assert_eq!(
        parsed.message_id(),
        Some("0190a3c2-7d4e-7b1a-9f3e-2c4d5e6f7a8b@shop.example")
    );
    assert_eq!(
        parsed
            .header("X-Herald-Message-Id")
            .and_then(|v| v.as_text()),
        Some("0190a3c2-7d4e-7b1a-9f3e-2c4d5e6f7a8b")
    );
    assert_eq!(
        parsed.date().map(|d| d.to_timestamp()),
        Some(email().date.timestamp())
    );
    assert_eq!(parsed.subject(), Some("Your cart misses you — 10 % off"));
    let from = parsed.from().and_then(|a| a.first()).unwrap();
    assert_eq!(from.name.as_deref(), Some("Acme Shop"));
    assert_eq!(from.address.as_deref(), Some("hello@shop.example"));
    let to = parsed.to().and_then(|a| a.first()).unwrap();
    assert_eq!(to.address.as_deref(), Some("jane@customer.example"));

    let content_type = parsed.root_part().content_type().unwrap();
    assert_eq!(content_type.ctype(), "multipart");
    assert_eq!(content_type.subtype(), Some("alternative"));
    assert_eq!(parsed.text_body_count(), 1);
    assert_eq!(parsed.html_body_count(), 1);
    // Line endings become CRLF on the wire; the content is otherwise intact.
    assert_eq!(
        parsed.body_text(0).unwrap().replace("\r\n", "\n"),
        email().text
    );
    assert_eq!(parsed.body_html(0).unwrap(), email().html);
}

#[test]
fn custom_headers_round_trip_including_a_long_list_unsubscribe() {
    let url = format!("https://shop.example/u/{}sig1234", "a1b2c3d4e5".repeat(12));
    assert_eq!(url.len(), 150);
    let mut email = email();
    email.headers = vec![
        (
            "List-Unsubscribe".to_owned(),
            format!("<{url}>, <mailto:unsubscribe@shop.example>"),
        ),
        (
            "List-Unsubscribe-Post".to_owned(),
            "List-Unsubscribe=One-Click".to_owned(),
        ),
        ("X-Herald-Workflow".to_owned(), "abandoned-cart".to_owned()),
    ];
    let built = message::build(&email).unwrap();
    // Long headers are folded, never longer than RFC 5322's 998-character line limit, and not
    // RFC 2047-encoded.
    let raw = String::from_utf8(built.raw.clone()).unwrap();
    assert!(raw.lines().all(|line| line.len() <= 998));
    assert!(!raw.contains("List-Unsubscribe: =?"));

    let parsed = MessageParser::default().parse(&built.raw).unwrap();
    let unsubscribe: Vec<&str> = parsed
        .list_unsubscribe()
        .as_address()
        .unwrap()
        .iter()
        .filter_map(|addr| addr.address.as_deref())
        .collect();
    assert_eq!(
        unsubscribe,
        [url.as_str(), "mailto:unsubscribe@shop.example"]
    );
    assert_eq!(
        parsed
            .header("List-Unsubscribe-Post")
            .and_then(|v| v.as_text()),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(
        parsed.header("X-Herald-Workflow").and_then(|v| v.as_text()),
        Some("abandoned-cart")
    );
}

#[test]
fn bare_addresses_are_accepted() {
    let mut email = email();
    email.from = "hello@shop.example".to_owned();
    email.to = "jane@customer.example".to_owned();
    let built = message::build(&email).unwrap();
    let parsed = MessageParser::default().parse(&built.raw).unwrap();
    assert_eq!(
        parsed.message_id(),
        Some("0190a3c2-7d4e-7b1a-9f3e-2c4d5e6f7a8b@shop.example")
    );
}

#[test]
fn invalid_addresses_name_the_field_and_value() {
    let mut bad_to = email();
    bad_to.to = "not an address".to_owned();
    let err = message::build(&bad_to).unwrap_err();
    assert!(
        matches!(&err, MessageError::InvalidAddress { field: "to", value, .. } if value == "not an address"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("to") && text.contains("not an address"),
        "{text}"
    );

    let mut bad_from = email();
    bad_from.from = "Acme <hello@>".to_owned();
    let err = message::build(&bad_from).unwrap_err();
    assert!(
        matches!(&err, MessageError::InvalidAddress { field: "from", .. }),
        "{err:?}"
    );
}

#[test]
fn unsafe_headers_subjects_and_ids_are_rejected() {
    let mut injected = email();
    injected.headers = vec![(
        "X-Campaign".to_owned(),
        "spring\r\nBcc: victim@example.com".to_owned(),
    )];
    assert!(matches!(
        message::build(&injected),
        Err(MessageError::InvalidHeader { name, .. }) if name == "X-Campaign"
    ));

    let mut reserved = email();
    reserved.headers = vec![("message-id".to_owned(), "<x@y>".to_owned())];
    assert!(matches!(
        message::build(&reserved),
        Err(MessageError::InvalidHeader { .. })
    ));

    let mut bad_name = email();
    bad_name.headers = vec![("X Bad".to_owned(), "v".to_owned())];
    assert!(matches!(
        message::build(&bad_name),
        Err(MessageError::InvalidHeader { .. })
    ));

    let mut subject = email();
    subject.subject = "line one\nline two".to_owned();
    assert!(matches!(
        message::build(&subject),
        Err(MessageError::InvalidSubject { .. })
    ));

    let mut id = email();
    id.message_id = "has space".to_owned();
    assert!(matches!(
        message::build(&id),
        Err(MessageError::InvalidMessageId { .. })
    ));
}
