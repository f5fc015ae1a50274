//! The SMTP transport against the scripted server: pooling, error classification, the
//! "outcome unknown" case, AUTH, and recovery from connections the server closed.

#[path = "support/smtp_server.rs"]
mod smtp_server;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use herald::message::{self, BuiltMessage, OutgoingEmail};
use herald::transport::smtp::{Smtp, SmtpConfig};
use herald::transport::{ErrorClass, Transport};
use mail_parser::MessageParser;
use smtp_server::{Phase, SmtpServer};

const WAIT: Duration = Duration::from_secs(10);

fn smtp_with(url: String, pool: usize, timeout: Duration) -> Transport {
    let config = SmtpConfig {
        url,
        pool,
        timeout,
        hello_name: Some("herald.test".to_owned()),
        dkim: None,
    };
    Transport::Smtp(Smtp::new("relay".to_owned(), config).unwrap())
}

fn smtp(url: String, pool: usize) -> Transport {
    smtp_with(url, pool, Duration::from_secs(5))
}

fn built(n: usize) -> BuiltMessage {
    message::build(&OutgoingEmail {
        message_id: format!("0190a3c2-7d4e-7b1a-9f3e-{n:012}"),
        from: "Acme Shop <hello@shop.example>".to_owned(),
        to: format!("customer{n}@customer.example"),
        subject: format!("Message {n}"),
        html: format!("<p>Message {n}</p>"),
        text: format!("Message {n}\n.leading dot survives dot-stuffing"),
        headers: vec![],
        date: Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap(),
    })
    .unwrap()
}

#[tokio::test]
async fn delivers_a_message_intact() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    assert_eq!(transport.name(), "relay");
    let msg = built(1);
    let receipt = transport.send(&msg).await.unwrap();
    assert!(receipt.response.starts_with("250 2.0.0 Ok"), "{receipt:?}");

    let received = server.wait_for(1, WAIT).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].from, "hello@shop.example");
    assert_eq!(received[0].to, ["customer1@customer.example"]);
    assert_eq!(received[0].auth_user, None);
    let parsed = MessageParser::default().parse(&received[0].data).unwrap();
    assert_eq!(
        parsed.message_id(),
        Some("0190a3c2-7d4e-7b1a-9f3e-000000000001@shop.example")
    );
    assert_eq!(
        parsed.body_text(0).unwrap().replace("\r\n", "\n"),
        "Message 1\n.leading dot survives dot-stuffing"
    );
    transport.shutdown().await;
}

#[tokio::test]
async fn commands_are_pipelined_only_when_the_server_offers_it() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    transport.send(&built(1)).await.expect("pipelined send");
    server.set_pipelining(false);
    // The parked connection learned PIPELINING from its EHLO; a new one must not assume it.
    server.disconnect_all().await;
    transport
        .send(&built(2))
        .await
        .expect("send one command at a time");
    let received = server.wait_for(2, WAIT).await;
    let pipelined: Vec<bool> = received.iter().map(|m| m.pipelined).collect();
    assert_eq!(pipelined, [true, false]);
    for (n, mail) in received.iter().enumerate() {
        let parsed = MessageParser::default().parse(&mail.data).unwrap();
        assert_eq!(
            parsed.body_text(0).unwrap().replace("\r\n", "\n"),
            format!("Message {}\n.leading dot survives dot-stuffing", n + 1)
        );
    }
    transport.shutdown().await;
}

#[tokio::test]
async fn concurrent_sends_are_bounded_by_the_pool_and_reuse_connections() {
    let server = SmtpServer::start().await;
    let transport = Arc::new(smtp(server.url(), 4));
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..50 {
        let transport = Arc::clone(&transport);
        sends.spawn(async move { transport.send(&built(n)).await });
    }
    while let Some(result) = sends.join_next().await {
        result.unwrap().unwrap();
    }

    let received = server.wait_for(50, WAIT).await;
    assert_eq!(received.len(), 50);
    let mut recipients: Vec<String> = received.iter().map(|m| m.to[0].clone()).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 50);
    assert!(
        server.max_concurrent_connections() <= 4,
        "{}",
        server.max_concurrent_connections()
    );
    assert!(
        server.connections_opened() <= 4,
        "{}",
        server.connections_opened()
    );
    transport.shutdown().await;
}

#[tokio::test]
async fn sequential_sends_use_one_connection() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 4);
    for n in 0..20 {
        transport.send(&built(n)).await.unwrap();
    }
    assert_eq!(server.wait_for(20, WAIT).await.len(), 20);
    assert_eq!(server.connections_opened(), 1);
    transport.shutdown().await;
}

#[tokio::test]
async fn sends_are_not_delayed_by_nagle() {
    // lettre writes the payload and the final dot separately; without TCP_NODELAY the dot waits
    // for the server's delayed ACK, ≥40 ms per message on Linux (measured: 20 sends 888 ms
    // without, 12 ms with). 50 sends would take ≥2 s; the bound leaves room for slow CI.
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    let started = std::time::Instant::now();
    for n in 0..50 {
        transport.send(&built(n)).await.unwrap();
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    transport.shutdown().await;
}

#[tokio::test]
async fn temporary_rcpt_rejection_is_transient_with_enhanced_code() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(Phase::Rcpt, "451 4.3.0 Try again later", 1);

    let err = transport.send(&built(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(err.is_transient());
    assert_eq!(err.code, Some(451));
    assert_eq!(err.enhanced.as_deref(), Some("4.3.0"));
    assert!(!err.after_data());
    assert!(!err.is_hard_bounce());
    assert!(err.message.contains("Try again later"), "{err}");
    // The server is still talking to us, so the session is closed politely.
    assert_eq!(server.quits_received(), 1);

    // The failed session is not reused; the retry gets a fresh connection and succeeds.
    transport.send(&built(1)).await.unwrap();
    assert_eq!(server.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(server.connections_opened(), 2);
    transport.shutdown().await;
}

#[tokio::test]
async fn unknown_mailbox_is_a_permanent_hard_bounce() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(
        Phase::Rcpt,
        "550 5.1.1 <customer1@customer.example>: Recipient address rejected",
        1,
    );
    let err = transport.send(&built(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.code, Some(550));
    assert_eq!(err.enhanced.as_deref(), Some("5.1.1"));
    assert!(err.is_hard_bounce());
    assert!(!err.after_data());
    transport.shutdown().await;
}

#[tokio::test]
async fn content_rejection_after_data_is_permanent_but_not_a_hard_bounce() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(Phase::EndOfData, "550 5.7.1 Message rejected as spam", 1);
    let err = transport.send(&built(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(!err.is_hard_bounce());
    // A definite reply after DATA is a known outcome, not an unknown one.
    assert!(!err.after_data());
    assert!(server.messages().is_empty());
    transport.shutdown().await;
}

#[tokio::test]
async fn reply_552_is_transient() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(Phase::Rcpt, "552 5.5.3 Too many recipients", 1);
    let err = transport.send(&built(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.code, Some(552));
    assert!(!err.is_hard_bounce());
    transport.shutdown().await;
}

#[tokio::test]
async fn sender_rejection_is_a_relay_problem_not_a_recipient_bounce() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(Phase::Mail, "553 5.7.1 Sender address not authorized", 1);
    let err = transport.send(&built(1)).await.unwrap_err();
    // Retrying after the operator fixes the sender works; suppressing the recipient would be wrong.
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.code, Some(553));
    assert!(!err.is_hard_bounce());
    transport.shutdown().await;
}

#[tokio::test]
async fn busy_greeting_is_transient() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(Phase::Connect, "421 4.3.2 Too many connections", 1);
    let err = transport.send(&built(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.code, Some(421));
    assert_eq!(err.enhanced.as_deref(), Some("4.3.2"));

    server.set_accepting(false);
    let err = transport.send(&built(1)).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.code, Some(421));

    server.set_accepting(true);
    transport.send(&built(1)).await.unwrap();
    assert_eq!(server.wait_for(1, WAIT).await.len(), 1);
    transport.shutdown().await;
}

#[tokio::test]
async fn connection_lost_after_data_means_outcome_unknown() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    transport.send(&built(1)).await.unwrap();
    server.drop_after_data(1);

    // The connection is a reused one, and it dies after the payload: no retry may happen.
    let err = transport.send(&built(2)).await.unwrap_err();
    assert!(err.after_data());
    assert!(err.after_data);
    assert!(err.is_transient());
    assert!(err.message.contains("outcome unknown"), "{err}");

    // The server did take the payload; exactly one copy exists.
    let received = server.wait_for(2, WAIT).await;
    assert_eq!(received.len(), 2);
    assert_eq!(server.connections_opened(), 1);
    transport.shutdown().await;
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    // Bind and release a port so nothing listens on it.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let transport = smtp(format!("smtp://{addr}?tls=none"), 1);
    let err = transport.send(&built(1)).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.code, None);
    assert!(!err.after_data());
}

#[tokio::test]
async fn silent_server_times_out_transiently() {
    // Accepts connections but never sends a greeting.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (_socket, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let transport = smtp_with(
        format!("smtp://{addr}?tls=none"),
        1,
        Duration::from_millis(200),
    );
    let err = transport.send(&built(1)).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.message.contains("timed out"), "{err}");
    holder.abort();
}

#[tokio::test]
async fn credentials_in_the_url_are_used_for_auth() {
    let server = SmtpServer::start().await;
    let url = format!(
        "smtp://herald%40shop.example:s3cr%3At@{}?tls=none",
        server.addr()
    );
    let transport = smtp(url, 1);
    transport.send(&built(1)).await.unwrap();
    let received = server.wait_for(1, WAIT).await;
    assert_eq!(
        received[0].auth_user.as_deref(),
        Some("herald@shop.example")
    );
    transport.shutdown().await;
}

#[tokio::test]
async fn credentials_are_not_sent_in_the_clear_without_tls_none() {
    let server = SmtpServer::start().await;
    // Opportunistic mode (no tls parameter) and the server offers no STARTTLS.
    let url = format!("smtp://user:secret@{}", server.addr());
    let transport = smtp(url, 1);
    let err = transport.send(&built(1)).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.message.contains("refusing"), "{err}");
    assert!(!err.message.contains("secret"), "{err}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn parked_connection_closed_by_the_server_is_replaced_transparently() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 2);
    transport.send(&built(1)).await.unwrap();
    server.disconnect_all().await;

    transport.send(&built(2)).await.unwrap();
    let received = server.wait_for(2, WAIT).await;
    assert_eq!(received.len(), 2);
    assert_eq!(server.connections_opened(), 2);
    transport.shutdown().await;
}

#[tokio::test]
async fn shutdown_quits_parked_connections_and_refuses_new_sends() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    transport.send(&built(1)).await.unwrap();
    assert_eq!(server.quits_received(), 0);
    transport.shutdown().await;
    assert_eq!(server.quits_received(), 1);
    let err = transport.send(&built(2)).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.message.contains("shut down"), "{err}");
    assert_eq!(server.connections_opened(), 1);
}

#[tokio::test]
async fn closing_421_mid_session_is_transient_and_the_next_send_reconnects() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(
        Phase::Rcpt,
        "421 4.7.0 Too many messages, closing connection",
        1,
    );
    let err = transport.send(&built(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.code, Some(421));
    assert_eq!(err.enhanced.as_deref(), Some("4.7.0"));
    assert!(!err.after_data() && !err.is_hard_bounce());

    // The closed session is not reused.
    transport.send(&built(1)).await.unwrap();
    assert_eq!(server.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(server.connections_opened(), 2);
    transport.shutdown().await;
}

#[tokio::test]
async fn temporary_rejection_after_data_is_transient_with_a_known_outcome() {
    let server = SmtpServer::start().await;
    let transport = smtp(server.url(), 1);
    server.fail(Phase::EndOfData, "451 4.3.0 Queue file write error", 1);
    let err = transport.send(&built(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.code, Some(451));
    assert_eq!(err.enhanced.as_deref(), Some("4.3.0"));
    // The server answered: it did not take the message, so a retry cannot duplicate it.
    assert!(!err.after_data());
    assert!(server.messages().is_empty());
    transport.shutdown().await;
}
