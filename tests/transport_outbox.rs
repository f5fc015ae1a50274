//! The outbox transport writes one parseable `.eml` per message, named by message id.

use chrono::{TimeZone, Utc};
use herald::message::{self, OutgoingEmail};
use herald::transport::{Transport, outbox::Outbox};
use mail_parser::MessageParser;

fn built(id: &str) -> message::BuiltMessage {
    message::build(&OutgoingEmail {
        message_id: id.to_owned(),
        from: "Acme Shop <hello@shop.example>".to_owned(),
        to: "jane@customer.example".to_owned(),
        subject: "Welcome".to_owned(),
        html: "<p>Welcome!</p>".to_owned(),
        text: "Welcome!".to_owned(),
        headers: vec![],
        date: Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap(),
    })
    .unwrap()
}

#[tokio::test]
async fn writes_a_parseable_eml_named_by_message_id() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that doesn't exist yet: the outbox creates it.
    let outbox_dir = dir.path().join("outbox");
    let transport = Transport::Outbox(Outbox::new("dev".to_owned(), outbox_dir.clone()));
    assert_eq!(transport.name(), "dev");

    let msg = built("0190a3c2-7d4e-7b1a-9f3e-000000000001");
    let receipt = transport.send(&msg).await.unwrap();
    let path = outbox_dir.join("0190a3c2-7d4e-7b1a-9f3e-000000000001.eml");
    assert_eq!(receipt.response, path.display().to_string());
    assert_eq!(receipt.provider_message_id, None);

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, msg.raw);
    let parsed = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(
        parsed.message_id(),
        Some("0190a3c2-7d4e-7b1a-9f3e-000000000001@shop.example")
    );
    assert_eq!(parsed.body_text(0).as_deref(), Some("Welcome!"));

    // Sending again (a retry) replaces the file; no temporary files are left behind.
    transport.send(&msg).await.unwrap();
    let names: Vec<String> = std::fs::read_dir(&outbox_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["0190a3c2-7d4e-7b1a-9f3e-000000000001.eml"]);
    transport.shutdown().await;
}

#[tokio::test]
async fn ids_that_would_escape_the_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new("dev".to_owned(), dir.path().to_path_buf());
    let mut msg = built("0190a3c2-7d4e-7b1a-9f3e-000000000002");
    msg.message_id = "../escape".to_owned();
    let err = outbox.send(&msg).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(err.message.contains("../escape"), "{err}");
}
