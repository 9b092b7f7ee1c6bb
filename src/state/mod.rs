//! SmolVM's state DB: one consistent read of every row, the stale-row update, and the
//! final row deletion. Owns how we talk to SQLite (read-only under `--dry-run`, a busy
//! timeout so SmolVM's `BEGIN EXCLUSIVE` writers are waited for, short transactions,
//! foreign keys on) and never creates, repairs or overwrites a DB file; and, for
//! 0.0.8–0.0.29, the same state in PostgreSQL (`pg`).
//!
//! Rooms: `read` (every release's schema, forwards JSON), `write` (marks, deletes,
//! stamps), `pg` (the server's copy); opening a DB and judging its file are here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::error::{Cause, Error, Result};

mod memory;
mod pg;
mod read;
mod write;

pub use pg::PgDb;
pub use read::parse_forwards;
pub use write::*;

/// A state DB as apply writes to it: a SQLite file, or SmolVM's PostgreSQL database.
pub enum Store {
    Sqlite(Db),
    Postgres(PgDb),
}

impl Store {
    /// Marks `marks` stale and deletes `deletes`, each only while unchanged (`Db::finish`).
    pub fn finish(
        &self,
        deletes: &[Stamped<'_>],
        marks: &[Stamped<'_>],
        now: &str,
    ) -> Result<Vec<RowOutcome>> {
        match self {
            Store::Sqlite(db) => db.finish(deletes, marks, now),
            Store::Postgres(db) => db.finish(deletes, marks, now),
        }
    }
}

/// Child tables keyed by `vm_id` that go with the VM: SmolVM's cascade deletes the first
/// four (we delete them explicitly too, so a DB whose foreign keys were never enforced is
/// cleaned alike); a deleted VM's browser sessions (0.0.6+) are gone with it, and their
/// directories are removed with its files.
const CHILD_TABLES: [&str; 5] = [
    "ssh_forwards",
    "ip_leases",
    "tap_allocations",
    "vsock_cids",
    "browser_sessions",
];

pub struct Db {
    pub path: PathBuf,
    conn: Connection,
    tables: Vec<String>,
    deadline: Instant,
}

/// How long SQLite may wait for SmolVM's writers (they hold `BEGIN EXCLUSIVE` briefly):
/// at most 10 s, and never past the run's deadline less a reserve (a quarter of what is
/// left, at most 2 s), so that a DB held too long still leaves time to list the host and
/// the run names the DB as the cause, not a listing that timed out after it.
fn busy_timeout(deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    let reserve = (left / 4).min(Duration::from_secs(2));
    left.saturating_sub(reserve).min(Duration::from_secs(10))
}

/// Opening a DB and the short write transactions.
impl Db {
    /// Opens an existing DB, named `path` in messages and opened through `via` (a path
    /// through the data dir's held fd). `read_only` opens it so SQLite cannot write a byte.
    pub fn open(path: &Path, via: &Path, read_only: bool, deadline: Instant) -> Result<Db> {
        let action = || format!("open state DB {}", path.display());
        check_header(via, &action())?;
        memory::use_process_allocator();
        let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
        flags |= if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let conn = Connection::open_with_flags(via, flags).map_err(|e| Error::db(action(), e))?;
        conn.busy_timeout(busy_timeout(deadline))
            .map_err(|e| Error::db(action(), e))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|e| Error::db(action(), e))?;
        let tables = table_names(&conn).map_err(|e| Error::db(action(), e))?;
        Ok(Db {
            path: path.to_path_buf(),
            conn,
            tables,
            deadline,
        })
    }

    /// A DB already in memory (a server's tables mirrored), named `name` in messages.
    pub fn mirror(name: &str, conn: Connection) -> Result<Db> {
        let tables = table_names(&conn).map_err(|e| Error::db(format!("read {name}"), e))?;
        Ok(Db {
            path: PathBuf::from(name),
            conn,
            tables,
            deadline: Instant::now(),
        })
    }

    fn has_table(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t == name)
    }
}

fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    stmt.query_map([], |r| r.get::<_, String>(0))?.collect()
}

/// The DB is damaged or not a DB at all (as opposed to locked or unreadable for now):
/// what it held is lost, and the live system is all there is to go by.
pub fn is_corrupt(e: &Error) -> bool {
    match &e.cause {
        Cause::Corrupt(_) => true,
        Cause::Db { code, .. } => matches!(
            code,
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        ),
        _ => false,
    }
}

/// Refuses files that are not SQLite databases before SQLite gets to see them. Only a
/// bad header is corruption; an error opening or reading the file keeps its errno (a
/// 0600 DB of another user is unreadable, not corrupt). An empty file, which SQLite
/// would read as an empty DB, is a DB truncated or still being created: its rows are
/// unknown, not absent.
fn check_header(path: &Path, action: &str) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(action, &e))?;
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(action, &e)),
        }
    }
    match n {
        0 => Err(Error::msg(
            action,
            "the file is empty (truncated, or SmolVM is creating it)",
        )),
        16 if &head == b"SQLite format 3\0" => Ok(()),
        _ => Err(Error::corrupt(action, "not a SQLite database (bad header)")),
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn files_that_are_not_databases_are_refused_untouched() {
        let p = std::env::temp_dir().join(format!("smolvm-state-garbage-{}.db", std::process::id()));
        std::fs::write(&p, b"definitely not sqlite, but long enough").unwrap();
        let err = Db::open(&p, &p, false, far()).err().unwrap();
        assert!(is_corrupt(&err), "{err}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"definitely not sqlite, but long enough"
        );
        std::fs::remove_file(&p).unwrap();
    }
}

#[cfg(test)]
mod testing {
    use super::*;

    /// A DB shaped like SmolVM 0.0.36's: an extra `display` column, more child tables
    /// (`vsock_cids`, `tap_allocations`), tables with no foreign key (`snapshots`), and no
    /// foreign keys enforced on the writer's side.
    pub const SCHEMA_036: &str = "
        CREATE TABLE vms (id TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT NOT NULL, network TEXT,
            pid INTEGER, socket_path TEXT, display TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE ip_leases (ip TEXT PRIMARY KEY, vm_id TEXT NOT NULL UNIQUE, tap_device TEXT NOT NULL,
            created_at TEXT NOT NULL);
        CREATE TABLE ssh_forwards (vm_id TEXT PRIMARY KEY, host_port INTEGER NOT NULL UNIQUE,
            guest_port INTEGER NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE vsock_cids (vm_id TEXT PRIMARY KEY, guest_cid INTEGER NOT NULL UNIQUE, created_at TEXT NOT NULL);
        CREATE TABLE tap_allocations (vm_id TEXT PRIMARY KEY, tap_device TEXT NOT NULL UNIQUE, mode TEXT NOT NULL,
            bridge_name TEXT, created_at TEXT NOT NULL);
        CREATE TABLE snapshots (snapshot_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL);
        INSERT INTO vms VALUES ('sbx-a', 'running', '{\"memory\":512,\"retain_disk_on_delete\":true}',
            '{\"tap_device\":\"tap2\",\"mode\":\"nat\"}', 7, NULL, NULL,
            '2026-11-28T10:00:00+00:00', '2026-11-28T10:00:01.5+00:00');
        INSERT INTO vms VALUES ('sbx-b', 'stopped', 'not json', NULL, NULL, NULL, NULL, 'x', 'x');
        INSERT INTO vms VALUES ('sbx-c', 'stopped', '{}', NULL, NULL, NULL, NULL, 'x', 'x');
        INSERT INTO ip_leases VALUES ('172.16.0.2', 'sbx-a', 'tap2', 'x');
        INSERT INTO ssh_forwards VALUES ('sbx-a', 2200, 22, 'x');
        INSERT INTO vsock_cids VALUES ('sbx-a', 3, 'x');
        INSERT INTO tap_allocations VALUES ('sbx-b', 'svmb0a1b2c3d', 'bridge', 'br0', 'x');
        INSERT INTO snapshots VALUES ('s1', 'sbx-deleted-long-ago');
    ";

    pub fn scratch_db(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("smolvm-state-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let c = Connection::open(&p).unwrap();
        c.execute_batch(SCHEMA_036).unwrap();
        p
    }

    pub fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    pub fn count(p: &Path, sql: &str) -> i64 {
        Connection::open(p)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }
}
