//! Reaching the server: a TCP connection (each address the name resolves to, within the
//! time allowed) or a Unix socket, then TLS when `sslmode` asks for it (libpq never asks
//! over a Unix socket).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::conn::{Error, Kind, broken, err, remaining};
use super::conninfo::{Addr, Host, Params, SslMode};
use super::tls;

pub(super) enum Plain {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Plain {
    pub(super) fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Plain::Tcp(s) => s.set_read_timeout(t).and_then(|()| s.set_write_timeout(t)),
            Plain::Unix(s) => s.set_read_timeout(t).and_then(|()| s.set_write_timeout(t)),
        }
    }
}

impl Read for Plain {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.read(b),
            Plain::Unix(s) => s.read(b),
        }
    }
}

impl Write for Plain {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.write(b),
            Plain::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Plain::Tcp(s) => s.flush(),
            Plain::Unix(s) => s.flush(),
        }
    }
}

pub(super) enum Io {
    Plain(Plain),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Plain>>),
}

impl Io {
    pub(super) fn plain(&self) -> &Plain {
        match self {
            Io::Plain(p) => p,
            Io::Tls(t) => &t.sock,
        }
    }
}

pub(super) fn open_socket(host: &Host, until: Instant) -> Result<Plain, Error> {
    match &host.addr {
        Addr::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", host.port));
            // A local connect does not block on the server's accept: the backlog takes it.
            UnixStream::connect(&path).map(Plain::Unix).map_err(|e| {
                err(
                    Kind::Connect,
                    format!(
                        "cannot connect to the server on socket {}: {} (is the server running locally and accepting connections on that socket?)",
                        path.display(),
                        crate::error::errno_text(e.raw_os_error().unwrap_or(0))
                    ),
                )
            })
        }
        Addr::Tcp(name) => {
            let target = host.hostaddr.as_deref().unwrap_or(name);
            let addrs: Vec<std::net::SocketAddr> = (target, host.port)
                .to_socket_addrs()
                .map_err(|e| err(Kind::Connect, format!("cannot resolve host {target:?}: {e}")))?
                .collect();
            let mut last = None;
            for a in addrs {
                let left = remaining(until)?;
                match TcpStream::connect_timeout(&a, left) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Plain::Tcp(s));
                    }
                    Err(e) => last = Some((a, e)),
                }
            }
            Err(match last {
                Some((_, e)) if e.kind() == io::ErrorKind::TimedOut => err(
                    Kind::Timeout,
                    format!("cannot connect to the server at {host}: no answer within the time allowed"),
                ),
                Some((a, e)) => {
                    let via = if a.ip().to_string() == *target {
                        String::new()
                    } else {
                        format!(" ({a})")
                    };
                    err(
                        Kind::Connect,
                        format!(
                            "cannot connect to the server at {host}{via}: {} (is the server running on that host and accepting TCP/IP connections?)",
                            e.raw_os_error()
                                .map_or_else(|| e.to_string(), crate::error::errno_text)
                        ),
                    )
                }
                None => err(Kind::Connect, format!("host {target:?} has no address")),
            })
        }
    }
}

/// SSLRequest, then the handshake: `S` starts TLS, `N` refuses it (fatal from
/// `require` on, plain otherwise).
pub(super) fn start_tls(p: &Params, host: &Host, mut sock: Plain, until: Instant) -> Result<Io, Error> {
    let config = tls::config(p).map_err(|e| err(Kind::Tls, e))?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    let mut answer = [0u8; 1];
    sock.set_timeouts(Some(remaining(until)?))
        .map_err(|e| broken(&e))?;
    sock.write_all(&request)
        .and_then(|()| sock.read_exact(&mut answer))
        .map_err(|e| broken(&e))?;
    match answer[0] {
        b'S' => {}
        b'N' if p.sslmode >= SslMode::Require => {
            return Err(err(
                Kind::Tls,
                format!(
                    "the server at {host} does not accept TLS connections, and sslmode={} requires TLS",
                    p.sslmode.name()
                ),
            ));
        }
        b'N' => return Ok(Io::Plain(sock)),
        other => {
            return Err(err(
                Kind::Broken,
                format!("the server answered the TLS request with {:?}", char::from(other)),
            ));
        }
    }
    let name = match &host.addr {
        Addr::Tcp(h) => h.as_str(),
        Addr::Unix(_) => "localhost",
    };
    let server_name = tls::server_name(name).map_err(|e| err(Kind::Tls, e))?;
    let conn = rustls::ClientConnection::new(config, server_name)
        .map_err(|e| err(Kind::Tls, format!("TLS set-up failed: {e}")))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream
            .sock
            .set_timeouts(Some(remaining(until)?))
            .map_err(|e| broken(&e))?;
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            return Err(
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(t) => err(
                        Kind::Tls,
                        format!("TLS with the server at {host} failed: {}", tls::explain(t)),
                    ),
                    None => broken(&e),
                },
            );
        }
    }
    Ok(Io::Tls(Box::new(stream)))
}
