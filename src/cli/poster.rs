//! A lean HTTP/1.1 client for load generators: one keep-alive connection that posts JSON and
//! reads each answer. The sending bench runs its load generator on the same two CPUs as the
//! Herald it measures; reqwest cost it about 50 µs of CPU per request there, a tenth of the
//! machine, which this client leaves to Herald (as `smtp-source` is lean on the SMTP side).
//! It speaks only what Herald answers: a status line, headers and a `Content-Length` body.

use std::io::Write;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What went wrong with one request.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("connection to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("unexpected answer from {0}: {1}")]
    Protocol(SocketAddr, String),
}

/// An answer: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One connection to `addr`, opened on first use and again after the server closed it.
pub struct Poster {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    request: Vec<u8>,
    line: Vec<u8>,
}

impl Poster {
    pub fn new(addr: SocketAddr) -> Poster {
        Poster {
            addr,
            stream: None,
            request: Vec::with_capacity(512),
            line: Vec::with_capacity(128),
        }
    }

    /// POSTs `body` (JSON) to `path` and reads the whole answer.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<Answer, PostError> {
        let io = |e| PostError::Io(self.addr, e);
        self.request.clear();
        // Written into the buffer kept between requests: no allocation per request.
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .map_err(io)?;
        self.request.extend_from_slice(body);
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let tcp = TcpStream::connect(self.addr).await.map_err(io)?;
                tcp.set_nodelay(true).map_err(io)?;
                self.stream.insert(BufReader::new(tcp))
            }
        };
        let answer = exchange(stream, &self.request, &mut self.line, self.addr).await;
        // Whatever failed, or a server that closes, leaves no connection to reuse.
        if !matches!(answer, Ok((_, true))) {
            self.stream = None;
        }
        answer.map(|(answer, _)| answer)
    }
}

/// Writes `request` and reads one answer; says whether the connection stays open.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    request: &[u8],
    line: &mut Vec<u8>,
    addr: SocketAddr,
) -> Result<(Answer, bool), PostError> {
    let io = |e| PostError::Io(addr, e);
    let bad = |what: String| PostError::Protocol(addr, what);
    stream.get_mut().write_all(request).await.map_err(io)?;
    let mut status = None;
    let mut length = None;
    let mut keep_alive = true;
    loop {
        line.clear();
        if stream.read_until(b'\n', line).await.map_err(io)? == 0 {
            return Err(bad("the connection closed before the answer".to_owned()));
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| bad("a header that is not UTF-8".to_owned()))?
            .trim_end();
        if text.is_empty() {
            break;
        }
        if status.is_none() {
            status = Some(status_code(text).ok_or_else(|| bad(format!("status line `{text}`")))?);
            continue;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(bad(format!("header `{text}`")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("content-length `{value}`")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(format!(
                "transfer-encoding `{value}` (only content-length)"
            )));
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    let status = status.ok_or_else(|| bad("no status line".to_owned()))?;
    let mut body = vec![0; length.unwrap_or(0)];
    stream.read_exact(&mut body).await.map_err(io)?;
    Ok((Answer { status, body }, keep_alive))
}

/// The status of an `HTTP/1.1 202 Accepted` line.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    parts.next()?.strip_prefix("HTTP/1.")?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_a_status_line() {
        assert_eq!(status_code("HTTP/1.1 202 Accepted"), Some(202));
        assert_eq!(status_code("HTTP/1.0 400 Bad Request"), Some(400));
        assert_eq!(status_code("HTTP/2 200"), None);
        assert_eq!(status_code("garbage"), None);
    }

    #[tokio::test]
    async fn posts_over_one_connection_and_reconnects_after_a_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut connections = 0;
            for close_after in [2, 1] {
                let (socket, _) = listener.accept().await.unwrap();
                connections += 1;
                let mut socket = BufReader::new(socket);
                for i in 0..close_after {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        socket.read_line(&mut line).await.unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    socket.read_exact(&mut body).await.unwrap();
                    let last = i + 1 == close_after;
                    let answer = format!(
                        "HTTP/1.1 202 Accepted\r\ncontent-length: {}\r\n{}\r\n{}",
                        body.len(),
                        if last { "connection: close\r\n" } else { "" },
                        String::from_utf8(body).unwrap()
                    );
                    socket.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            }
            connections
        });
        let client = async {
            let mut poster = Poster::new(addr);
            for n in 0..3 {
                let body = format!("{{\"n\":{n}}}");
                let answer = poster.post("/v1/events", body.as_bytes()).await.unwrap();
                assert_eq!(answer.status, 202);
                assert_eq!(answer.body, body.as_bytes());
            }
            server.await.unwrap()
        };
        // A client that opened a connection per request would wait for an answer forever.
        let connections = tokio::time::timeout(std::time::Duration::from_secs(10), client)
            .await
            .expect("the answers came over the connections the server accepted");
        // Two requests on the first connection, which the server then closed; one on a second.
        assert_eq!(connections, 2);
    }
}
