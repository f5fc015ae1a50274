//! TCP_NODELAY on PostgreSQL connections. sqlx 0.9.0 stopped setting it (launchbadge/sqlx
//! issue 4335; fixed upstream, not yet released), so a message larger than one TCP segment —
//! a recompute batch binding 500 profiles — left its last segment waiting for the server's
//! delayed ACK: about 40 ms per large statement on loopback, most of a 500-contact batch.
//!
//! sqlx does not hand out its socket, so a new connection asks the server for its client-side
//! port and the socket with that local port and the server as its peer is found among this
//! process's descriptors. Nothing else is touched: only a socket the caller's connection owns
//! (it is borrowed mutably for the duration) gets the option set.

use std::net::SocketAddr;

use sqlx::PgConnection;

/// Sets TCP_NODELAY on `conn`'s socket. Returns whether it did: not for a Unix-domain socket,
/// and not on systems where descriptors cannot be listed.
pub async fn set_on(conn: &mut PgConnection) -> sqlx::Result<bool> {
    let ports: (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
            .fetch_one(&mut *conn)
            .await?;
    let (Some(local), Some(server)) = ports else {
        return Ok(false);
    };
    let (Ok(local), Ok(server)) = (u16::try_from(local), u16::try_from(server)) else {
        return Ok(false);
    };
    Ok(set_on_socket(local, server))
}

#[cfg(target_os = "linux")]
fn set_on_socket(local_port: u16, peer_port: u16) -> bool {
    with_socket(local_port, peer_port, |socket| {
        socket.set_tcp_nodelay(true).is_ok()
    })
    .unwrap_or(false)
}

#[cfg(not(target_os = "linux"))]
fn set_on_socket(_local_port: u16, _peer_port: u16) -> bool {
    false
}

/// Runs `f` on this process's TCP socket with these local and peer ports, if there is one.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn with_socket<T>(
    local_port: u16,
    peer_port: u16,
    f: impl FnOnce(&socket2::SockRef<'_>) -> T,
) -> Option<T> {
    use std::os::fd::{BorrowedFd, RawFd};

    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    for entry in entries.flatten() {
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only queried with getsockname/getpeername/getsockopt and
        // changed with one setsockopt, never closed. If another thread closes it meanwhile
        // the calls fail with EBADF or meet whatever reused the number; `f` runs only on a TCP
        // socket with the connection's own local port and the server as peer, which is the
        // socket of the connection borrowed by `set_on` and so cannot close meanwhile.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let socket = socket2::SockRef::from(&fd);
        if is_connection(&socket, local_port, peer_port) {
            return Some(f(&socket));
        }
    }
    None
}

#[cfg(target_os = "linux")]
fn is_connection(socket: &socket2::SockRef<'_>, local_port: u16, peer_port: u16) -> bool {
    let port = |addr: std::io::Result<socket2::SockAddr>| -> Option<u16> {
        addr.ok()?.as_socket().as_ref().map(SocketAddr::port)
    };
    socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
        && port(socket.local_addr()) == Some(local_port)
        && port(socket.peer_addr()) == Some(peer_port)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::store::{Store, WriterCpu};

    #[test]
    fn finds_the_socket_by_its_ports_and_sets_the_option() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr").port();
        let client = TcpStream::connect(("127.0.0.1", server)).expect("connect");
        let (_accepted, _) = listener.accept().expect("accept");
        let local = client.local_addr().expect("local").port();
        assert!(!client.nodelay().expect("nodelay"));

        assert!(!set_on_socket(local, server.wrapping_add(1)));
        assert!(!client.nodelay().expect("nodelay"));
        assert!(set_on_socket(local, server));
        assert!(client.nodelay().expect("nodelay"));
    }

    /// A PostgreSQL store's connections have the option set (CI always sets the URL).
    #[tokio::test]
    async fn a_postgres_store_connection_has_nodelay_set() {
        let Ok(url) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
            eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
            return;
        };
        let store = Store::connect(&url, 2, WriterCpu::Off)
            .await
            .expect("connect");
        let Store::Postgres(pool) = &store else {
            panic!("a PostgreSQL store")
        };
        let (local, server): (i32, i32) =
            sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
                .fetch_one(pool)
                .await
                .expect("ports");
        let ports = (u16::try_from(local), u16::try_from(server));
        let (Ok(local), Ok(server)) = ports else {
            panic!("ports out of range: {local}, {server}")
        };
        let nodelay = with_socket(local, server, |s| s.tcp_nodelay().expect("getsockopt"));
        assert_eq!(nodelay, Some(true));
        store.close().await;
    }
}
