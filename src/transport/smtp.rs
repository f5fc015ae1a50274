//! The `smtp` transport: relays messages through an SMTP server over a bounded connection pool.
//!
//! We drive lettre's `AsyncSmtpConnection` ourselves instead of using `AsyncSmtpTransport`,
//! because (rust-ecosystem.md §2.1) lettre's pool does not bound how many connections it opens,
//! never sets `TCP_NODELAY` (Nagle + delayed ACK cap a connection at ≈27 messages/s), tests every
//! reused connection with a NOOP round trip, and its `send` cannot tell us *where* a transaction
//! failed — which we need to know to avoid duplicate sends. This module owns:
//! - parsing the relay URL (`smtp://`, `smtps://`, `?tls=…`, credentials);
//! - opening connections (TCP with `TCP_NODELAY`, EHLO, STARTTLS, AUTH);
//! - the pool: at most `pool` connections, idle ones parked for reuse for up to 30 s;
//! - running one transaction (MAIL, RCPT, DATA, payload; pipelined when the server offers
//!   PIPELINING) and classifying its failure;
//! - DKIM-signing the payload (when configured) before a connection is taken, so the signing
//!   cost never holds a pooled connection.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lettre::transport::smtp::Error as LettreError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};

use super::{ErrorClass, Receipt, SendError};
use crate::message::BuiltMessage;
use crate::message::dkim::DkimSigner;

/// Parked connections older than this are closed instead of reused. Relays close idle sessions
/// after a while (Postfix: 300 s, many providers: less); reusing one the server already dropped
/// costs a failed command and a reconnect (lettre/lettre#743).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default port for `smtp://` (relay) URLs.
const SMTP_PORT: u16 = 25;
/// How long a stopping Herald waits for a relay to answer `QUIT`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default port for `smtps://` (implicit TLS submission, RFC 8314) URLs.
const SMTPS_PORT: u16 = 465;

/// Settings for an SMTP relay.
#[derive(Clone)]
pub struct SmtpConfig {
    /// `smtp://[user:pass@]host[:port][?tls=required|none|opportunistic]` or
    /// `smtps://[user:pass@]host[:port]`. User name and password are percent-decoded.
    pub url: String,
    /// Maximum number of simultaneous connections to the relay (at least 1).
    pub pool: usize,
    /// Limit for connecting and for each SMTP command (including the message payload).
    pub timeout: Duration,
    /// Name sent with EHLO; defaults to the machine's hostname.
    pub hello_name: Option<String>,
    /// Signs every message with DKIM before it is sent, when set.
    pub dkim: Option<Arc<DkimSigner>>,
}

impl fmt::Debug for SmtpConfig {
    // Hand-written so the password in the URL never reaches logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &redact_url(&self.url))
            .field("pool", &self.pool)
            .field("timeout", &self.timeout)
            .field("hello_name", &self.hello_name)
            .field("dkim", &self.dkim)
            .finish()
    }
}

/// A relay configuration that cannot work. The URL is shown with its credentials masked.
#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    /// The URL could not be parsed.
    #[error("invalid SMTP URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with credentials masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `pool` was 0.
    #[error("SMTP pool size must be at least 1")]
    ZeroPool,
    /// `timeout` was 0.
    #[error("SMTP timeout must be greater than zero")]
    ZeroTimeout,
    /// The EHLO name is neither an IP address nor a host name.
    #[error("invalid SMTP hello name {0:?}: expected a host name or an IP address")]
    InvalidHelloName(String),
    /// TLS settings for the host could not be built.
    #[error("cannot set up TLS for {host}: {reason}")]
    Tls {
        /// The relay host.
        host: String,
        /// lettre's explanation.
        reason: String,
    },
}

/// How (and whether) a connection is encrypted.
enum Security {
    /// `smtps://`: TLS from the first byte.
    Implicit(TlsParameters),
    /// `?tls=required`: STARTTLS must be offered and succeed.
    Required(TlsParameters),
    /// Default for `smtp://`: STARTTLS when the server offers it, plaintext otherwise.
    Opportunistic(TlsParameters),
    /// `?tls=none`: never encrypt (local relays, tests).
    Plain,
}

/// Where in a session a command failed. Decides classification, whether a reused connection may
/// be retried, and whether the outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connect,
    Greeting,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    EndOfData,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting/EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of DATA",
        }
    }

    /// Replies at these stages are about this message (its recipient or content). Earlier
    /// rejections — greeting, EHLO, STARTTLS, AUTH, MAIL FROM — are about our relay setup or
    /// sender (blocklisted IP, wrong password, unauthorized sender); failing the message
    /// permanently, or worse suppressing its recipient as a hard bounce on a `550`, would be
    /// wrong, so those are transient and retried until the operator fixes the configuration.
    fn concerns_message(self) -> bool {
        matches!(self, Stage::Rcpt | Stage::Data | Stage::EndOfData)
    }
}

/// How a command failed.
enum Failure {
    Timeout,
    Smtp(LettreError),
}

impl Failure {
    fn reply_code(&self) -> Option<u16> {
        match self {
            Failure::Smtp(err) => err.status().map(u16::from),
            Failure::Timeout => None,
        }
    }

    /// No reply, or `421` (the server is closing the channel): what a connection the server
    /// dropped while it sat parked looks like.
    fn looks_like_dead_connection(&self) -> bool {
        matches!(self.reply_code(), None | Some(421))
    }
}

/// A failed transaction attempt on one connection.
struct Attempt {
    error: SendError,
    /// The connection died before MAIL FROM was accepted, so no transaction was started and a
    /// fresh connection can safely try again.
    dead_before_mail: bool,
}

/// Connections not currently in use.
struct Idle {
    /// Set by [`Smtp::shutdown`]; connections returned afterwards are QUIT instead of parked.
    closed: bool,
    /// Most recently used last.
    conns: Vec<(Session, Instant)>,
}

/// An open connection, and whether its server takes the commands of a transaction in one
/// write (RFC 2920 PIPELINING).
struct Session {
    conn: AsyncSmtpConnection,
    pipelining: bool,
}

/// An SMTP relay transport with at most `pool` connections. Clones share the pool.
#[derive(Clone)]
pub struct Smtp {
    relay: Arc<Relay>,
}

impl fmt::Debug for Smtp {
    // Hand-written: the credentials must not be printed, and connections have no useful Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smtp")
            .field("name", &self.relay.name)
            .field("host", &self.relay.host)
            .field("port", &self.relay.port)
            .field("timeout", &self.relay.timeout)
            .finish_non_exhaustive()
    }
}

/// The shared state behind [`Smtp`].
struct Relay {
    name: String,
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    dkim: Option<Arc<DkimSigner>>,
    /// One permit per connection allowed to exist; a send holds one from start to finish.
    permits: Semaphore,
    idle: Mutex<Idle>,
}

impl Smtp {
    /// Validates the configuration; no connection is opened until the first send.
    pub fn new(name: String, config: SmtpConfig) -> Result<Smtp, SmtpConfigError> {
        if config.pool == 0 {
            return Err(SmtpConfigError::ZeroPool);
        }
        if config.timeout.is_zero() {
            return Err(SmtpConfigError::ZeroTimeout);
        }
        let endpoint = parse_url(&config.url).map_err(|reason| SmtpConfigError::InvalidUrl {
            url: redact_url(&config.url),
            reason,
        })?;
        let tls = || {
            TlsParameters::new(endpoint.host.clone()).map_err(|err| SmtpConfigError::Tls {
                host: endpoint.host.clone(),
                reason: err.to_string(),
            })
        };
        let security = match endpoint.mode {
            TlsMode::Implicit => Security::Implicit(tls()?),
            TlsMode::Required => Security::Required(tls()?),
            TlsMode::Opportunistic => Security::Opportunistic(tls()?),
            TlsMode::None => Security::Plain,
        };
        let hello = match config.hello_name {
            Some(name) => parse_hello_name(name)?,
            // Resolved once: lettre's default looks the hostname up on every call.
            None => ClientId::default(),
        };
        let relay = Relay {
            name,
            host: endpoint.host,
            port: endpoint.port,
            security,
            credentials: endpoint.credentials,
            hello,
            timeout: config.timeout,
            dkim: config.dkim,
            permits: Semaphore::new(config.pool),
            idle: Mutex::new(Idle {
                closed: false,
                conns: Vec::new(),
            }),
        };
        Ok(Smtp {
            relay: Arc::new(relay),
        })
    }

    /// The configured transport name.
    pub fn name(&self) -> &str {
        &self.relay.name
    }

    /// Sends one message on a pooled connection (waiting for one if `pool` are busy).
    ///
    /// A parked connection that turns out to be dead before MAIL FROM is accepted is replaced by
    /// a fresh one once, transparently. Failures after that point are never retried here: from
    /// DATA on, a retry could deliver the message twice.
    pub async fn send(&self, msg: &BuiltMessage) -> Result<Receipt, SendError> {
        self.relay.send(msg).await
    }

    /// QUITs all parked connections; later sends fail with a transient error, and connections
    /// still in use are QUIT when their send finishes.
    pub async fn shutdown(&self) {
        self.relay.shutdown().await;
    }
}

impl Relay {
    async fn send(&self, msg: &BuiltMessage) -> Result<Receipt, SendError> {
        let signed = match &self.dkim {
            Some(signer) => Some(self.sign(signer, msg).await?),
            None => None,
        };
        let payload = signed.as_deref().unwrap_or(&msg.raw);
        let _permit = self.permits.acquire().await.map_err(|_| {
            SendError::transient(format!("smtp {}: transport is shut down", self.name))
        })?;

        if let Some(session) = self.take_idle() {
            match self.send_on(session, msg, payload).await {
                Err(attempt) if attempt.dead_before_mail => {
                    tracing::debug!(
                        transport = %self.name,
                        error = %attempt.error,
                        "parked SMTP connection was dead; retrying on a fresh connection"
                    );
                }
                other => return other.map_err(|attempt| attempt.error),
            }
        }

        let session = self.connect().await?;
        self.send_on(session, msg, payload)
            .await
            .map_err(|attempt| attempt.error)
    }

    /// DKIM-signs on the blocking pool: an RSA-2048 signature costs milliseconds of CPU, which
    /// would otherwise stall every other task on this runtime thread.
    async fn sign(
        &self,
        signer: &Arc<DkimSigner>,
        msg: &BuiltMessage,
    ) -> Result<Vec<u8>, SendError> {
        let (signer, msg) = (Arc::clone(signer), msg.clone());
        tokio::task::spawn_blocking(move || signer.sign(&msg))
            .await
            .map_err(|err| {
                SendError::transient(format!("smtp {}: DKIM signing failed: {err}", self.name))
            })
    }

    async fn shutdown(&self) {
        let parked = {
            let mut idle = self.lock_idle();
            idle.closed = true;
            std::mem::take(&mut idle.conns)
        };
        self.permits.close();
        let mut quits = tokio::task::JoinSet::new();
        // QUIT is a courtesy: a relay that does not answer must not hold up a stop.
        let limit = self.timeout.min(QUIT_TIMEOUT);
        for (mut session, _) in parked {
            quits.spawn(async move {
                // The relay going away during shutdown changes nothing for us.
                let _ = timeout(limit, session.conn.quit()).await;
            });
        }
        while quits.join_next().await.is_some() {}
    }

    /// Runs one transaction on `conn` with `payload` (the message, signed or not), then parks or
    /// closes the connection.
    async fn send_on(
        &self,
        mut session: Session,
        msg: &BuiltMessage,
        payload: &[u8],
    ) -> Result<Receipt, Attempt> {
        let parameters = match self.mail_parameters(&session.conn, msg) {
            Ok(parameters) => parameters,
            Err(error) => {
                // Nothing was sent; the session is still clean and reusable.
                self.park(session).await;
                return Err(Attempt {
                    error,
                    dead_before_mail: false,
                });
            }
        };

        match self
            .transaction(&mut session, msg, payload, parameters)
            .await
        {
            Ok(response) => {
                self.park(session).await;
                Ok(Receipt {
                    provider_message_id: None,
                    response: reply_text(&response),
                })
            }
            Err((stage, failure)) => {
                let error = self.send_error(stage, &failure);
                let dead_before_mail = stage == Stage::Mail && failure.looks_like_dead_connection();
                // A server that replied is still talking to us, so say goodbye; otherwise (no
                // reply, timeout, 421) the session is in an unknown state and is just dropped.
                // Either way it is never parked: a rejected transaction leaves state behind.
                if !failure.looks_like_dead_connection() {
                    let _ = timeout(self.timeout, session.conn.quit()).await;
                }
                Err(Attempt {
                    error,
                    dead_before_mail,
                })
            }
        }
    }

    /// MAIL FROM, RCPT TO for each recipient, DATA, payload. Returns the final reply.
    ///
    /// With PIPELINING the three commands go out in one write and their replies are read in
    /// order, so a message costs two round trips instead of four. A rejection leaves later
    /// replies unread, which is harmless: a failed session is never parked.
    async fn transaction(
        &self,
        session: &mut Session,
        msg: &BuiltMessage,
        payload: &[u8],
        parameters: Vec<MailParameter>,
    ) -> Result<Response, (Stage, Failure)> {
        let envelope = &msg.envelope;
        let conn = &mut session.conn;
        let mail = Mail::new(envelope.from().cloned(), parameters);
        let rcpts = envelope
            .to()
            .iter()
            .map(|recipient| Rcpt::new(recipient.clone(), Vec::new()));
        if session.pipelining {
            let mut commands = mail.to_string();
            for rcpt in rcpts {
                commands.push_str(&rcpt.to_string());
            }
            commands.push_str(&Data.to_string());
            // `command` writes it all, then reads the first reply: MAIL FROM's.
            self.step(Stage::Mail, conn.command(commands)).await?;
            for _ in envelope.to() {
                self.step(Stage::Rcpt, conn.read_response()).await?;
            }
            self.step(Stage::Data, conn.read_response()).await?;
        } else {
            self.step(Stage::Mail, conn.command(mail)).await?;
            for rcpt in rcpts {
                self.step(Stage::Rcpt, conn.command(rcpt)).await?;
            }
            self.step(Stage::Data, conn.command(Data)).await?;
        }
        match std::str::from_utf8(payload) {
            // The payload and its terminating `.` in one write.
            Ok(text) => {
                self.step(Stage::EndOfData, conn.command(data_block(text)))
                    .await
            }
            // `message` dot-stuffs the payload and appends the terminating `.`.
            Err(_) => self.step(Stage::EndOfData, conn.message(payload)).await,
        }
    }

    /// MAIL FROM parameters the message needs, or a permanent error when this relay cannot carry
    /// it at all (lettre would fail the same way, but only after starting the transaction).
    fn mail_parameters(
        &self,
        conn: &AsyncSmtpConnection,
        msg: &BuiltMessage,
    ) -> Result<Vec<MailParameter>, SendError> {
        let envelope = &msg.envelope;
        let info = conn.server_info();
        let mut parameters = Vec::new();
        let non_ascii_address = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|address| !AsRef::<str>::as_ref(address).is_ascii());
        if non_ascii_address {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(SendError::permanent(format!(
                    "smtp {}: the envelope has non-ASCII addresses but the relay does not support SMTPUTF8",
                    self.name
                )));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !msg.raw.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(SendError::permanent(format!(
                    "smtp {}: the message has 8-bit content but the relay does not support 8BITMIME",
                    self.name
                )));
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Ok(parameters)
    }

    /// Opens and prepares a connection: TCP (+ implicit TLS), greeting, EHLO, STARTTLS, AUTH.
    async fn connect(&self) -> Result<Session, SendError> {
        let mut conn = match &self.security {
            Security::Implicit(tls) => {
                // lettre can only run TLS on a socket it opened itself (its TLS stream type is
                // private), so implicit-TLS connections don't get TCP_NODELAY. STARTTLS upgrades
                // our own socket and keeps it.
                let server = (self.host.as_str(), self.port);
                let connecting = AsyncSmtpConnection::connect_tokio1(
                    server,
                    Some(self.timeout),
                    &self.hello,
                    Some(tls.clone()),
                    None,
                );
                self.step(Stage::Connect, connecting)
                    .await
                    .map_err(|(stage, failure)| self.send_error(stage, &failure))?
            }
            _ => self.connect_tcp().await?,
        };

        let starttls = match &self.security {
            Security::Required(tls) => {
                if !conn.can_starttls() {
                    return Err(SendError::transient(format!(
                        "smtp {}: {}:{} does not offer STARTTLS, which tls=required demands",
                        self.name, self.host, self.port
                    )));
                }
                Some(tls)
            }
            Security::Opportunistic(tls) if conn.can_starttls() => Some(tls),
            _ => None,
        };
        if let Some(tls) = starttls {
            self.step(Stage::StartTls, conn.starttls(tls.clone(), &self.hello))
                .await
                .map_err(|(stage, failure)| self.send_error(stage, &failure))?;
        }

        // lettre keeps only the EHLO keywords it uses itself, so ask again for PIPELINING;
        // once per connection. Before AUTH, since a new EHLO resets the session.
        let ehlo = self
            .step(Stage::Greeting, conn.command(Ehlo::new(self.hello.clone())))
            .await
            .map_err(|(stage, failure)| self.send_error(stage, &failure))?;
        let pipelining = offers_pipelining(&ehlo);

        if let Some(credentials) = &self.credentials {
            // In opportunistic mode an attacker can strip STARTTLS from the EHLO reply to read
            // the password; only an explicit tls=none allows AUTH in the clear.
            if !conn.is_encrypted() && !matches!(self.security, Security::Plain) {
                return Err(SendError::transient(format!(
                    "smtp {}: refusing to send credentials unencrypted: {}:{} offers no STARTTLS \
                     (use tls=required or smtps://, or tls=none to allow plaintext AUTH)",
                    self.name, self.host, self.port
                )));
            }
            self.step(
                Stage::Auth,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
            )
            .await
            .map_err(|(stage, failure)| self.send_error(stage, &failure))?;
        }

        tracing::debug!(
            transport = %self.name,
            host = %self.host,
            port = self.port,
            encrypted = conn.is_encrypted(),
            pipelining,
            "opened SMTP connection"
        );
        Ok(Session { conn, pipelining })
    }

    /// Plain TCP with `TCP_NODELAY`, then greeting and EHLO.
    async fn connect_tcp(&self) -> Result<AsyncSmtpConnection, SendError> {
        let tcp = match timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => {
                return Err(SendError::transient(format!(
                    "smtp {}: cannot connect to {}:{}: {err}",
                    self.name, self.host, self.port
                )));
            }
            Err(_) => return Err(self.send_error(Stage::Connect, &Failure::Timeout)),
        };
        // lettre writes the payload and the terminating dot separately; with Nagle on, the dot
        // waits for the server's delayed ACK (~40 ms) on every message.
        tcp.set_nodelay(true).map_err(|err| {
            SendError::transient(format!("smtp {}: cannot set TCP_NODELAY: {err}", self.name))
        })?;
        let stream: Box<dyn AsyncTokioStream> = Box::new(tcp);
        self.step(
            Stage::Greeting,
            AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
        )
        .await
        .map_err(|(stage, failure)| self.send_error(stage, &failure))
    }

    /// Runs one command under the per-command timeout.
    async fn step<T>(
        &self,
        stage: Stage,
        command: impl Future<Output = Result<T, LettreError>>,
    ) -> Result<T, (Stage, Failure)> {
        match timeout(self.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err((stage, Failure::Smtp(err))),
            Err(_) => Err((stage, Failure::Timeout)),
        }
    }

    /// Turns a failed command into the error the scheduler sees.
    fn send_error(&self, stage: Stage, failure: &Failure) -> SendError {
        let what = stage.describe();
        match failure {
            Failure::Smtp(err) if err.status().is_some() => {
                let code = failure.reply_code().unwrap_or_default();
                // lettre keeps the reply text (all lines joined) as the error's source.
                let text = std::error::Error::source(err)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let context = format!("smtp {}: {what} rejected", self.name);
                let mut error = SendError::from_smtp_reply(code, &text, &context);
                if !stage.concerns_message() {
                    error.class = ErrorClass::Transient;
                }
                error
            }
            _ if stage == Stage::EndOfData => {
                let cause = match failure {
                    Failure::Smtp(err) => err.to_string(),
                    Failure::Timeout => format!("no reply within {:?}", self.timeout),
                };
                SendError {
                    after_data: true,
                    ..SendError::transient(format!(
                        "smtp {}: connection failed after the message was sent, before the \
                         server confirmed it ({cause}); delivery outcome unknown",
                        self.name
                    ))
                }
            }
            Failure::Smtp(err) => SendError::transient(format!(
                "smtp {}: {what} failed ({}:{}): {err}",
                self.name, self.host, self.port
            )),
            Failure::Timeout => SendError::transient(format!(
                "smtp {}: {what} timed out after {:?} ({}:{})",
                self.name, self.timeout, self.host, self.port
            )),
        }
    }

    /// The most recently used parked connection that is not too old. Expired ones are closed.
    fn take_idle(&self) -> Option<Session> {
        let mut idle = self.lock_idle();
        idle.conns.retain(|(session, since)| {
            since.elapsed() < IDLE_TIMEOUT && !session.conn.has_broken()
        });
        idle.conns.pop().map(|(session, _)| session)
    }

    /// Parks a healthy connection for reuse, or QUITs it when the transport is shut down.
    async fn park(&self, session: Session) {
        if session.conn.has_broken() {
            return;
        }
        let mut rejected = {
            let mut idle = self.lock_idle();
            if idle.closed {
                Some(session)
            } else {
                idle.conns.push((session, Instant::now()));
                None
            }
        };
        if let Some(session) = rejected.as_mut() {
            let _ = timeout(self.timeout, session.conn.quit()).await;
        }
    }

    fn lock_idle(&self) -> MutexGuard<'_, Idle> {
        // The guarded data is a plain list; a panic elsewhere cannot leave it inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether an EHLO reply lists the PIPELINING keyword (one keyword per line after the first).
fn offers_pipelining(ehlo: &Response) -> bool {
    ehlo.message().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    })
}

/// The DATA payload as sent: a `.` starting a line doubled (RFC 5321 §4.5.2), then the
/// terminating `CRLF.CRLF`. The same bytes as lettre's `message`, in one string.
fn data_block(payload: &str) -> String {
    let mut block = String::with_capacity(payload.len() + 16);
    if payload.starts_with('.') {
        block.push('.');
    }
    let mut rest = payload;
    while let Some(at) = rest.find("\r\n.") {
        block.push_str(&rest[..at + 3]);
        block.push('.');
        rest = &rest[at + 3..];
    }
    block.push_str(rest);
    block.push_str("\r\n.\r\n");
    block
}

/// `250 2.0.0 Ok: queued as 4F2A…` — code and all reply lines.
fn reply_text(response: &Response) -> String {
    let mut text = u16::from(response.code()).to_string();
    for line in response.message() {
        text.push(' ');
        text.push_str(line);
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    Implicit,
    Required,
    Opportunistic,
    None,
}

#[derive(Debug)]
struct Endpoint {
    host: String,
    port: u16,
    mode: TlsMode,
    credentials: Option<Credentials>,
}

/// Parses the relay URL. Hand-written because the forms are few and `url` is not a dependency.
fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected smtp://host[:port] or smtps://host[:port]")?;
    let implicit = match scheme.to_ascii_lowercase().as_str() {
        "smtp" => false,
        "smtps" => true,
        other => {
            return Err(format!(
                "unsupported scheme {other:?} (expected smtp or smtps)"
            ));
        }
    };
    if rest.contains('#') {
        return Err(
            "a fragment ('#') is not allowed; percent-encode '#' in credentials as %23".to_owned(),
        );
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = match before_query.split_once('/') {
        None | Some((_, "")) => before_query.trim_end_matches('/'),
        Some(_) => {
            return Err(
                "a path is not allowed (percent-encode '/' in credentials as %2F)".to_owned(),
            );
        }
    };
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    let credentials = userinfo.map(parse_userinfo).transpose()?;
    let (host, port) = parse_host_port(host_port)?;

    let mut mode = if implicit {
        TlsMode::Implicit
    } else {
        TlsMode::Opportunistic
    };
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "tls" {
            return Err(format!("unknown parameter {key:?} (only tls is supported)"));
        }
        mode = match (implicit, value) {
            (true, "required") => TlsMode::Implicit,
            (true, _) => {
                return Err(format!(
                    "tls={value} contradicts smtps://, which always uses TLS"
                ));
            }
            (false, "required") => TlsMode::Required,
            (false, "opportunistic") => TlsMode::Opportunistic,
            (false, "none") => TlsMode::None,
            (false, _) => {
                return Err(format!(
                    "unknown tls mode {value:?} (expected required, opportunistic or none)"
                ));
            }
        };
    }

    Ok(Endpoint {
        host,
        port: port.unwrap_or(if implicit { SMTPS_PORT } else { SMTP_PORT }),
        mode,
        credentials,
    })
}

fn parse_userinfo(userinfo: &str) -> Result<Credentials, String> {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let user = percent_decode(user).map_err(|reason| format!("user name: {reason}"))?;
    let password = percent_decode(password).map_err(|reason| format!("password: {reason}"))?;
    if user.is_empty() {
        return Err("empty user name before '@'".to_owned());
    }
    Ok(Credentials::new(user, password))
}

fn parse_host_port(host_port: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unterminated '[' in IPv6 host")?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("invalid IPv6 address {host:?}"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {after:?} after IPv6 address"))?,
            ),
        };
        (host, port)
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(format!("invalid host {host:?}"));
    }
    let port = port
        .map(|port| match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("invalid port {port:?}")),
            Ok(port) => Ok(port),
        })
        .transpose()?;
    Ok((host.to_owned(), port))
}

/// RFC 3986 percent-decoding; the result must be UTF-8.
fn percent_decode(input: &str) -> Result<String, String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or("'%' must be followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded value is not UTF-8".to_owned())
}

/// Masks everything between the scheme and the last `@`, so neither user nor password leaks.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn parse_hello_name(name: String) -> Result<ClientId, SmtpConfigError> {
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ClientId::Ipv4(ip)),
        Ok(IpAddr::V6(ip)) => Ok(ClientId::Ipv6(ip)),
        Err(_) => {
            let valid = !name.is_empty()
                && name.len() <= 255
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
            if valid {
                Ok(ClientId::Domain(name))
            } else {
                Err(SmtpConfigError::InvalidHelloName(name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> SmtpConfig {
        SmtpConfig {
            url: url.to_owned(),
            pool: 2,
            timeout: Duration::from_secs(5),
            hello_name: Some("herald.test".to_owned()),
            dkim: None,
        }
    }

    #[test]
    fn data_blocks_are_dot_stuffed_and_terminated() {
        assert_eq!(data_block("a\r\nb\r\n"), "a\r\nb\r\n\r\n.\r\n");
        assert_eq!(
            data_block(".top\r\n.\r\n..two\r\nmid.dle\r\n"),
            "..top\r\n..\r\n...two\r\nmid.dle\r\n\r\n.\r\n"
        );
        assert_eq!(data_block(""), "\r\n.\r\n");
    }

    #[test]
    fn pipelining_is_read_from_the_ehlo_keywords() {
        let reply = |lines: &[&str]| {
            Response::new(
                lettre::transport::smtp::response::Code::new(
                    lettre::transport::smtp::response::Severity::PositiveCompletion,
                    lettre::transport::smtp::response::Category::MailSystem,
                    lettre::transport::smtp::response::Detail::Zero,
                ),
                lines.iter().map(|l| (*l).to_owned()).collect(),
            )
        };
        assert!(offers_pipelining(&reply(&[
            "mx greets you",
            "SIZE 1000",
            "pipelining"
        ])));
        assert!(!offers_pipelining(&reply(&["mx greets you", "8BITMIME"])));
        // The greeting line is the server's name, not a keyword.
        assert!(!offers_pipelining(&reply(&["PIPELINING", "8BITMIME"])));
    }

    #[test]
    fn url_forms_parse() {
        let plain = parse_url("smtp://relay.example").unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("relay.example", 25));
        assert_eq!(plain.mode, TlsMode::Opportunistic);
        assert!(plain.credentials.is_none());

        let required = parse_url("smtp://relay.example:587?tls=required").unwrap();
        assert_eq!((required.port, required.mode), (587, TlsMode::Required));

        let none = parse_url("SMTP://127.0.0.1:2525/?tls=none").unwrap();
        assert_eq!((none.port, none.mode), (2525, TlsMode::None));

        let implicit = parse_url("smtps://u%40x:p%3A%2Fss@relay.example").unwrap();
        assert_eq!((implicit.port, implicit.mode), (465, TlsMode::Implicit));
        assert_eq!(
            implicit.credentials,
            Some(Credentials::new("u@x".to_owned(), "p:/ss".to_owned()))
        );

        let v6 = parse_url("smtp://[::1]:2525").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 2525));
    }

    #[test]
    fn bad_urls_are_explained() {
        let cases = [
            ("http://relay.example", "unsupported scheme"),
            ("relay.example:25", "expected smtp://"),
            ("smtp://", "missing host"),
            ("smtp://relay.example:0", "invalid port"),
            ("smtp://relay.example:port", "invalid port"),
            ("smtp://relay.example?tls=maybe", "unknown tls mode"),
            ("smtp://relay.example?pool=3", "unknown parameter"),
            ("smtps://relay.example?tls=none", "contradicts smtps"),
            ("smtp://relay.example/path", "path is not allowed"),
            ("smtp://u:p%zz@relay.example", "two hex digits"),
            ("smtp://:pw@relay.example", "empty user name"),
            ("smtp://[::1", "unterminated"),
        ];
        for (url, expected) in cases {
            let err = parse_url(url).expect_err(url);
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn config_errors_hide_credentials() {
        let err = Smtp::new(
            "relay".to_owned(),
            config("smtp://user:secret@relay.example:0"),
        )
        .err()
        .unwrap();
        let text = err.to_string();
        assert!(text.contains("invalid port"), "{text}");
        assert!(!text.contains("secret") && !text.contains("user"), "{text}");
        let debug = format!("{:?}", config("smtp://user:secret@relay.example"));
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn pool_timeout_and_hello_name_are_checked() {
        let mut zero_pool = config("smtp://relay.example");
        zero_pool.pool = 0;
        assert!(matches!(
            Smtp::new("r".to_owned(), zero_pool),
            Err(SmtpConfigError::ZeroPool)
        ));
        let mut zero_timeout = config("smtp://relay.example");
        zero_timeout.timeout = Duration::ZERO;
        assert!(matches!(
            Smtp::new("r".to_owned(), zero_timeout),
            Err(SmtpConfigError::ZeroTimeout)
        ));
        let mut bad_hello = config("smtp://relay.example");
        bad_hello.hello_name = Some("bad name\r\n".to_owned());
        assert!(matches!(
            Smtp::new("r".to_owned(), bad_hello),
            Err(SmtpConfigError::InvalidHelloName(_))
        ));
        assert!(Smtp::new("r".to_owned(), config("smtps://relay.example")).is_ok());
    }
}
