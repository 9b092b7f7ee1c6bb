//! One synchronous session: reached (`socket`), logged in (`auth`), then statements over
//! the extended query protocol with text parameters and text results, from
//! `postgres-protocol`'s codec. Every wait is bounded by the run's deadline (the connect
//! also by `connect_timeout`).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};

use super::conninfo::{Addr, Host, Params, SslMode};
use super::socket::{Io, open_socket, start_tls};

/// What went wrong, in a class a caller can act on and words a user can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The server could not be reached (refused, no such socket, no route, DNS).
    Connect,
    /// TLS was refused, or the certificate did not check out.
    Tls,
    /// The login was refused (password, pg_hba, a method we do not speak).
    Auth,
    /// The database does not exist.
    NoDatabase,
    /// The server answered a statement with an error (SQLSTATE, and its table if named).
    Server { sqlstate: String, table: Option<String> },
    /// The run's deadline (or `connect_timeout`) passed.
    Timeout,
    /// The connection broke or the server said something we cannot read.
    Broken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub text: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

pub(super) fn err(kind: Kind, text: impl Into<String>) -> Error {
    Error {
        kind,
        text: text.into(),
    }
}

pub(super) fn broken(e: &io::Error) -> Error {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        err(
            Kind::Timeout,
            "the server did not answer within the run's --timeout",
        )
    } else {
        err(Kind::Broken, format!("the connection broke: {e}"))
    }
}

/// A column of a result: its name and type OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// A statement's result in text form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The count of the command tag (`DELETE 1`), 0 when it has none.
    pub affected: u64,
}

/// An open, authenticated session.
pub struct Conn {
    pub(super) io: Io,
    rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    deadline: Instant,
    /// Where it is connected, for messages (`db:5432`, `socket /run/…/.s.PGSQL.5432`).
    pub server: String,
    /// Whether the session is encrypted.
    pub tls: bool,
}

/// Opens a session to the first of `p.hosts` that accepts it (libpq's order); the
/// error of the last one tried otherwise. `read_only` makes every transaction of the
/// session read-only on the server's side. `warn` hears of an ignored password file.
pub fn connect(
    p: &Params,
    read_only: bool,
    deadline: Instant,
    warn: &mut dyn FnMut(String),
) -> Result<Conn, Error> {
    let mut last = err(Kind::Connect, "no host to connect to");
    for host in &p.hosts {
        match connect_host(p, host, read_only, deadline, warn) {
            Ok(c) => return Ok(c),
            Err(e) => {
                // The password or the database is the same on every host: no point going on.
                if matches!(e.kind, Kind::Auth | Kind::NoDatabase | Kind::Timeout) {
                    return Err(e);
                }
                last = e;
            }
        }
    }
    Err(last)
}

pub(super) fn remaining(deadline: Instant) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(err(
            Kind::Timeout,
            "the run's --timeout passed before the server answered",
        ))
    } else {
        Ok(left)
    }
}

fn connect_host(
    p: &Params,
    host: &Host,
    read_only: bool,
    deadline: Instant,
    warn: &mut dyn FnMut(String),
) -> Result<Conn, Error> {
    let until = match p.connect_timeout {
        Some(t) => deadline.min(Instant::now() + t),
        None => deadline,
    };
    let sock = open_socket(host, until)?;
    // libpq never asks for TLS over a Unix socket, whatever sslmode says.
    let io = if matches!(host.addr, Addr::Tcp(_)) && p.sslmode >= SslMode::Prefer {
        start_tls(p, host, sock, until)?
    } else {
        Io::Plain(sock)
    };
    let mut conn = Conn {
        tls: matches!(io, Io::Tls(_)),
        io,
        rbuf: BytesMut::with_capacity(16 * 1024),
        wbuf: BytesMut::with_capacity(16 * 1024),
        deadline: until,
        server: host.to_string(),
    };
    conn.startup(p, read_only)?;
    conn.authenticate(p, host, warn)?;
    conn.deadline = deadline;
    Ok(conn)
}

impl Conn {
    /// Bounds the next read or write by the deadline.
    fn arm(&self) -> Result<(), Error> {
        let left = remaining(self.deadline)?;
        self.io
            .plain()
            .set_timeouts(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| broken(&e))
    }

    pub(super) fn flush_out(&mut self) -> Result<(), Error> {
        self.arm()?;
        let buf = self.wbuf.split();
        let r = match &mut self.io {
            Io::Plain(s) => s.write_all(&buf).and_then(|()| s.flush()),
            Io::Tls(s) => s.write_all(&buf).and_then(|()| s.flush()),
        };
        r.map_err(|e| broken(&e))
    }

    fn fill(&mut self) -> Result<(), Error> {
        self.arm()?;
        let mut chunk = [0u8; 16 * 1024];
        let n = match &mut self.io {
            Io::Plain(s) => s.read(&mut chunk),
            Io::Tls(s) => s.read(&mut chunk),
        }
        .map_err(|e| broken(&e))?;
        if n == 0 {
            return Err(err(Kind::Broken, "the server closed the connection"));
        }
        self.rbuf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub(super) fn message(&mut self) -> Result<backend::Message, Error> {
        loop {
            match backend::Message::parse(&mut self.rbuf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => self.fill()?,
                Err(e) => return Err(err(Kind::Broken, format!("cannot read the server's answer: {e}"))),
            }
        }
    }

    fn startup(&mut self, p: &Params, read_only: bool) -> Result<(), Error> {
        let left_ms = remaining(self.deadline)?.as_millis().max(1).to_string();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &p.user),
            ("database", &p.dbname),
            ("client_encoding", "UTF8"),
            (
                "application_name",
                p.application_name.as_deref().unwrap_or("smolvm-cleanup"),
            ),
            // The server gives up on our statements and locks when we would.
            ("statement_timeout", &left_ms),
            ("lock_timeout", &left_ms),
        ];
        if read_only {
            params.push(("default_transaction_read_only", "on"));
        }
        if let Some(o) = &p.options {
            params.push(("options", o));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| err(Kind::Broken, format!("cannot encode the startup message: {e}")))?;
        self.flush_out()
    }

    /// One statement with text parameters (None: NULL).
    pub fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows, Error> {
        self.encode(sql, params)?;
        self.flush_out()?;
        self.result()?
    }

    /// Several statements, each followed by a Sync: each is its own implicit transaction,
    /// so one that fails leaves the others. Sent in bounded batches (a full socket buffer
    /// on both sides would stall us both). The outer error is a broken session.
    pub fn pipeline(
        &mut self,
        stmts: &[(&str, Vec<Option<String>>)],
    ) -> Result<Vec<Result<Rows, Error>>, Error> {
        const BATCH: usize = 128;
        let mut out = Vec::with_capacity(stmts.len());
        for chunk in stmts.chunks(BATCH) {
            for (sql, params) in chunk {
                let params: Vec<Option<&str>> = params.iter().map(Option::as_deref).collect();
                self.encode(sql, &params)?;
            }
            self.flush_out()?;
            for _ in chunk {
                out.push(self.result()?);
            }
        }
        Ok(out)
    }

    fn encode(&mut self, sql: &str, params: &[Option<&str>]) -> Result<(), Error> {
        let enc = |e: io::Error| err(Kind::Broken, format!("cannot encode a statement: {e}"));
        frontend::parse("", sql, std::iter::empty(), &mut self.wbuf).map_err(enc)?;
        frontend::bind(
            "",
            "",
            std::iter::once(0i16),
            params.iter(),
            |p, buf| match p {
                Some(v) => {
                    buf.extend_from_slice(v.as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            std::iter::once(0i16),
            &mut self.wbuf,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => {
                err(Kind::Broken, format!("cannot encode a parameter: {e}"))
            }
            frontend::BindError::Serialization(e) => enc(e),
        })?;
        frontend::describe(b'P', "", &mut self.wbuf).map_err(enc)?;
        frontend::execute("", 0, &mut self.wbuf).map_err(enc)?;
        frontend::sync(&mut self.wbuf);
        Ok(())
    }

    /// Reads one statement's answer up to its ReadyForQuery. Outer: the session broke;
    /// inner: the statement's own error.
    fn result(&mut self) -> Result<Result<Rows, Error>, Error> {
        let mut rows = Rows::default();
        let mut failed = None;
        loop {
            match self.message()? {
                backend::Message::RowDescription(body) => {
                    let mut fields = body.fields();
                    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
                        rows.columns.push(Column {
                            name: f.name().to_string(),
                            type_oid: f.type_oid(),
                        });
                    }
                }
                backend::Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::with_capacity(rows.columns.len());
                    while let Ok(Some(r)) = fallible_iterator::FallibleIterator::next(&mut ranges) {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.rows.push(row);
                }
                backend::Message::CommandComplete(body) => {
                    let tag = body.tag().unwrap_or_default();
                    rows.affected = tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                }
                backend::Message::ErrorResponse(body) => failed = Some(server_error(&body, false)),
                backend::Message::ReadyForQuery(_) => {
                    return Ok(match failed {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    });
                }
                _ => {}
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Terminate, best effort: the server then ends the session at once.
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush_out();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The server's error, classed by its SQLSTATE.
pub(super) fn server_error(body: &backend::ErrorResponseBody, login: bool) -> Error {
    let (mut code, mut message, mut detail, mut table) = (String::new(), String::new(), None, None);
    let mut fields = body.fields();
    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        match f.type_() {
            b'C' => code = text(f.value_bytes()),
            b'M' => message = text(f.value_bytes()),
            b'D' => detail = Some(text(f.value_bytes())),
            b't' => table = Some(text(f.value_bytes())),
            _ => {}
        }
    }
    let text = match &detail {
        Some(d) if !login => format!("{message} ({d})"),
        _ => message.clone(),
    };
    let kind = match code.as_str() {
        "3D000" => Kind::NoDatabase,
        c if login && (c.starts_with("28") || c == "08004") => Kind::Auth,
        "57014" | "55P03" => Kind::Timeout,
        _ => Kind::Server {
            sqlstate: code.clone(),
            table,
        },
    };
    let text = if kind == Kind::Timeout {
        format!("{text}: the run's --timeout passed")
    } else {
        text
    };
    err(kind, text)
}
