//! A scripted SMTP server for integration tests.
//!
//! Plaintext only, on 127.0.0.1 with an ephemeral port. It speaks enough SMTP for lettre (EHLO/HELO,
//! AUTH PLAIN/LOGIN accepting any credentials, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP,
//! QUIT), records every accepted message, counts connections, and lets a test inject failures:
//! scripted replies per phase, a connection dropped after the DATA payload, refusing new
//! connections, and closing every open connection. Waiting is done with `Notify`, never by
//! polling, so tests stay fast and deterministic.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// A point in the SMTP dialogue where a scripted reply can replace the normal one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The greeting sent when a client connects. The connection is closed after a scripted
    /// greeting (as servers do after `421`/`554` greetings).
    Connect,
    /// The reply to `MAIL FROM`.
    Mail,
    /// The reply to `RCPT TO`.
    Rcpt,
    /// The reply to the `DATA` command (instead of `354`).
    Data,
    /// The reply after the message payload (instead of `250 … queued`); the message is not
    /// recorded.
    EndOfData,
}

/// A message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Envelope sender (`MAIL FROM`), without angle brackets.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), without angle brackets.
    pub to: Vec<String>,
    /// The message as received, dot-unstuffed, without the terminating `.` line.
    pub data: Vec<u8>,
    /// The user name the session authenticated as, if it did.
    pub auth_user: Option<String>,
    /// `RCPT TO` had already arrived when `MAIL FROM` was read: the client pipelined them.
    pub pipelined: bool,
}

/// A running scripted SMTP server. Dropping it stops accepting and closes open sessions.
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

struct Script {
    phase: Phase,
    reply: String,
    remaining: usize,
}

struct Shared {
    messages: Mutex<Vec<ReceivedMail>>,
    message_added: Notify,
    script: Mutex<Vec<Script>>,
    drop_after_data: AtomicUsize,
    hang_after_data: AtomicUsize,
    accepting: AtomicBool,
    /// EHLO offers PIPELINING.
    pipelining: AtomicBool,
    opened: AtomicUsize,
    open_now: AtomicUsize,
    max_open: AtomicUsize,
    quits: AtomicUsize,
    connection_closed: Notify,
    /// Bumped to make every open session close its connection.
    disconnect: watch::Sender<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Takes one use of the first scripted reply for `phase`, if any.
    fn scripted(&self, phase: Phase) -> Option<String> {
        let mut script = lock(&self.script);
        let entry = script
            .iter_mut()
            .find(|entry| entry.phase == phase && entry.remaining > 0)?;
        entry.remaining -= 1;
        let reply = entry.reply.clone();
        script.retain(|entry| entry.remaining > 0);
        Some(reply)
    }

    fn record(&self, mail: ReceivedMail) -> usize {
        let count = {
            let mut messages = lock(&self.messages);
            messages.push(mail);
            messages.len()
        };
        self.message_added.notify_waiters();
        count
    }
}

impl SmtpServer {
    /// Binds 127.0.0.1 on an ephemeral port and starts accepting.
    pub async fn start() -> SmtpServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind test SMTP server");
        let addr = listener.local_addr().expect("test SMTP server address");
        let (disconnect, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            messages: Mutex::new(Vec::new()),
            message_added: Notify::new(),
            script: Mutex::new(Vec::new()),
            drop_after_data: AtomicUsize::new(0),
            hang_after_data: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            pipelining: AtomicBool::new(true),
            opened: AtomicUsize::new(0),
            open_now: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            quits: AtomicUsize::new(0),
            connection_closed: Notify::new(),
            disconnect,
        });
        let accept_loop = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        SmtpServer {
            addr,
            shared,
            accept_loop,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT?tls=none`.
    pub fn url(&self) -> String {
        format!("smtp://{}?tls=none", self.addr)
    }

    /// Messages accepted so far, in order of acceptance.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.shared.messages).clone()
    }

    /// How many messages were accepted so far, without copying them (a test that polls while
    /// thousands arrive would otherwise copy them all on every poll).
    pub fn received(&self) -> usize {
        lock(&self.shared.messages).len()
    }

    /// Waits until at least `n` messages were accepted or `timeout` passed; returns the messages
    /// accepted by then (the caller asserts on the count).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so a message recorded in between still wakes us.
            let added = self.shared.message_added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.messages();
            }
        }
    }

    /// Connections accepted since start (including refused ones).
    pub fn connections_opened(&self) -> usize {
        self.shared.opened.load(Ordering::SeqCst)
    }

    /// The highest number of connections that were open at the same time.
    pub fn max_concurrent_connections(&self) -> usize {
        self.shared.max_open.load(Ordering::SeqCst)
    }

    /// QUIT commands received so far (counted before the `221` reply is sent, so a client that
    /// got its reply sees the count).
    pub fn quits_received(&self) -> usize {
        self.shared.quits.load(Ordering::SeqCst)
    }

    /// The next `times` commands of `phase` get `reply` (e.g. `"451 4.3.0 Try again later"`).
    /// A `421` reply also closes the connection, as RFC 5321 prescribes.
    pub fn fail(&self, phase: Phase, reply: &str, times: usize) {
        lock(&self.shared.script).push(Script {
            phase,
            reply: reply.to_owned(),
            remaining: times,
        });
    }

    /// The next `times` messages are read completely and recorded, and then the connection is
    /// closed without the final reply: the client cannot know whether the message was accepted.
    pub fn drop_after_data(&self, times: usize) {
        self.shared
            .drop_after_data
            .fetch_add(times, Ordering::SeqCst);
    }

    /// The next `times` messages are read completely and recorded, and then the server never
    /// answers: the sending process can die while waiting for the receipt.
    pub fn hang_after_data(&self, times: usize) {
        self.shared
            .hang_after_data
            .fetch_add(times, Ordering::SeqCst);
    }

    /// Whether EHLO offers PIPELINING (RFC 2920) from now on; on by default, as on most relays.
    pub fn set_pipelining(&self, offered: bool) {
        self.shared.pipelining.store(offered, Ordering::SeqCst);
    }

    /// When false, new connections get `421 4.3.2 Service not available` and are closed.
    pub fn set_accepting(&self, accept: bool) {
        self.shared.accepting.store(accept, Ordering::SeqCst);
    }

    /// Closes every open connection from the server side (as a relay's idle timeout would) and
    /// returns once they are all closed.
    pub async fn disconnect_all(&self) {
        self.shared
            .disconnect
            .send_modify(|generation| *generation += 1);
        loop {
            let closed = self.shared.connection_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.shared.open_now.load(Ordering::SeqCst) == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.shared
            .disconnect
            .send_modify(|generation| *generation += 1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        shared.opened.fetch_add(1, Ordering::SeqCst);
        let open = shared.open_now.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_open.fetch_max(open, Ordering::SeqCst);
        let guard = OpenConnection(Arc::clone(&shared));
        // Replies must not wait for the client's delayed ACK; a failure only costs speed.
        let _ = stream.set_nodelay(true);
        let disconnect = shared.disconnect.subscribe();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _guard = guard;
            let (read, write) = stream.into_split();
            let mut session = Session {
                shared,
                reader: BufReader::new(read),
                writer: write,
                disconnect,
                helo: false,
                auth_user: None,
                from: None,
                to: Vec::new(),
                pipelined: false,
            };
            // A failed write just means the client went away; the session ends either way.
            let _ = session.run().await;
        });
    }
}

/// Decrements the open-connection count when a session ends, however it ends.
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_now.fetch_sub(1, Ordering::SeqCst);
        self.0.connection_closed.notify_waiters();
    }
}

struct Session {
    shared: Arc<Shared>,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    disconnect: watch::Receiver<u64>,
    helo: bool,
    auth_user: Option<String>,
    from: Option<String>,
    to: Vec<String>,
    pipelined: bool,
}

/// What the session loop does after a command.
enum Next {
    Continue,
    Close,
}

impl Session {
    async fn run(&mut self) -> std::io::Result<()> {
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return self.reply("421 4.3.2 Service not available").await;
        }
        if let Some(reply) = self.shared.scripted(Phase::Connect) {
            return self.reply(&reply).await;
        }
        self.reply("220 herald-test ESMTP ready").await?;
        while let Some(line) = self.next_line().await {
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let (verb, argument) = line.split_once(' ').unwrap_or((line, ""));
            let next = match verb.to_ascii_uppercase().as_str() {
                "EHLO" => {
                    self.reset();
                    self.helo = true;
                    let pipelining = if self.shared.pipelining.load(Ordering::SeqCst) {
                        "250-PIPELINING\r\n"
                    } else {
                        ""
                    };
                    let reply = format!(
                        "250-herald-test greets {argument}\r\n{pipelining}250-8BITMIME\r\n\
                         250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN"
                    );
                    self.reply(&reply).await?;
                    Next::Continue
                }
                "HELO" => {
                    self.reset();
                    self.helo = true;
                    self.reply("250 herald-test").await?;
                    Next::Continue
                }
                "AUTH" => self.auth(argument).await?,
                "MAIL" => self.mail(argument).await?,
                "RCPT" => self.rcpt(argument).await?,
                "DATA" => self.data().await?,
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 Ok").await?;
                    Next::Continue
                }
                "NOOP" => {
                    self.reply("250 2.0.0 Ok").await?;
                    Next::Continue
                }
                "QUIT" => {
                    self.shared.quits.fetch_add(1, Ordering::SeqCst);
                    self.reply("221 2.0.0 Bye").await?;
                    Next::Close
                }
                _ => {
                    self.reply("502 5.5.2 Error: command not recognized")
                        .await?;
                    Next::Continue
                }
            };
            if let Next::Close = next {
                break;
            }
        }
        Ok(())
    }

    /// The next line (with its line ending), or `None` on EOF, read error or disconnect request.
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        tokio::select! {
            _ = self.disconnect.changed() => None,
            read = self.reader.read_until(b'\n', &mut line) => match read {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line),
            },
        }
    }

    async fn reply(&mut self, reply: &str) -> std::io::Result<()> {
        // One write per reply: split writes would wait on Nagle + delayed ACK (~40 ms each).
        self.writer
            .write_all(format!("{reply}\r\n").as_bytes())
            .await?;
        self.writer.flush().await
    }

    /// Sends a scripted reply; `421` means the server closes the channel.
    async fn scripted_reply(&mut self, reply: &str) -> std::io::Result<Next> {
        self.reply(reply).await?;
        Ok(if reply.starts_with("421") {
            Next::Close
        } else {
            Next::Continue
        })
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    async fn auth(&mut self, argument: &str) -> std::io::Result<Next> {
        let (mechanism, initial) = argument.split_once(' ').unwrap_or((argument, ""));
        let user = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let response = if initial.is_empty() {
                    self.reply("334 ").await?;
                    self.next_line_text().await
                } else {
                    Some(initial.to_owned())
                };
                // authzid NUL authcid NUL password — the user is the second field.
                response
                    .and_then(|r| base64_decode(&r))
                    .and_then(|decoded| {
                        decoded
                            .split(|&b| b == 0)
                            .nth(1)
                            .map(|user| String::from_utf8_lossy(user).into_owned())
                    })
            }
            "LOGIN" => {
                let user = if initial.is_empty() {
                    self.reply("334 VXNlcm5hbWU6").await?;
                    self.next_line_text().await
                } else {
                    Some(initial.to_owned())
                };
                self.reply("334 UGFzc3dvcmQ6").await?;
                let password = self.next_line_text().await;
                password
                    .and(user.and_then(|u| base64_decode(&u)))
                    .map(|user| String::from_utf8_lossy(&user).into_owned())
            }
            _ => {
                self.reply("504 5.5.4 Unrecognized authentication type")
                    .await?;
                return Ok(Next::Continue);
            }
        };
        match user {
            Some(user) => {
                self.auth_user = Some(user);
                self.reply("235 2.7.0 Authentication successful").await?;
            }
            None => {
                self.reply("501 5.5.2 Cannot decode response").await?;
            }
        }
        Ok(Next::Continue)
    }

    async fn next_line_text(&mut self) -> Option<String> {
        let line = self.next_line().await?;
        Some(
            String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        )
    }

    async fn mail(&mut self, argument: &str) -> std::io::Result<Next> {
        if !self.helo {
            self.reply("503 5.5.1 Error: send HELO/EHLO first").await?;
            return Ok(Next::Continue);
        }
        if let Some(reply) = self.shared.scripted(Phase::Mail) {
            return self.scripted_reply(&reply).await;
        }
        self.reset();
        self.pipelined = !self.reader.buffer().is_empty();
        self.from = Some(angle_address(argument));
        self.reply("250 2.1.0 Ok").await?;
        Ok(Next::Continue)
    }

    async fn rcpt(&mut self, argument: &str) -> std::io::Result<Next> {
        if self.from.is_none() {
            self.reply("503 5.5.1 Error: need MAIL command").await?;
            return Ok(Next::Continue);
        }
        if let Some(reply) = self.shared.scripted(Phase::Rcpt) {
            return self.scripted_reply(&reply).await;
        }
        self.to.push(angle_address(argument));
        self.reply("250 2.1.5 Ok").await?;
        Ok(Next::Continue)
    }

    async fn data(&mut self) -> std::io::Result<Next> {
        if self.to.is_empty() {
            self.reply("554 5.5.1 Error: no valid recipients").await?;
            return Ok(Next::Continue);
        }
        if let Some(reply) = self.shared.scripted(Phase::Data) {
            return self.scripted_reply(&reply).await;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;

        let mut data = Vec::new();
        loop {
            let Some(line) = self.next_line().await else {
                // Client vanished mid-payload: nothing is accepted.
                return Ok(Next::Close);
            };
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            // RFC 5321 §4.5.2: a leading dot was doubled by the client.
            let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(unstuffed);
        }

        let mail = ReceivedMail {
            from: self.from.take().unwrap_or_default(),
            to: std::mem::take(&mut self.to),
            data,
            auth_user: self.auth_user.clone(),
            pipelined: self.pipelined,
        };

        let drop_now = self
            .shared
            .drop_after_data
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if drop_now {
            self.shared.record(mail);
            return Ok(Next::Close);
        }
        let hang_now = self
            .shared
            .hang_after_data
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hang_now {
            self.shared.record(mail);
            return std::future::pending().await;
        }
        if let Some(reply) = self.shared.scripted(Phase::EndOfData) {
            return self.scripted_reply(&reply).await;
        }
        let count = self.shared.record(mail);
        self.reply(&format!("250 2.0.0 Ok: queued as TEST{count}"))
            .await?;
        Ok(Next::Continue)
    }
}

/// `FROM:<a@b> SIZE=10` → `a@b`.
fn angle_address(argument: &str) -> String {
    match (argument.find('<'), argument.find('>')) {
        (Some(start), Some(end)) if start < end => argument[start + 1..end].to_owned(),
        _ => argument
            .split_once(':')
            .map_or(argument, |(_, address)| address)
            .trim()
            .to_owned(),
    }
}

/// Standard base64 with optional padding; `None` on any other character.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in input.trim().bytes() {
        if byte == b'=' {
            break;
        }
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}
