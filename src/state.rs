//! SmolVM's SQLite state DB: one consistent read of every row, the stale-row update, and
//! the final row deletion. Owns how we talk to SQLite (read-only under `--dry-run`, a
//! busy timeout so SmolVM's `BEGIN EXCLUSIVE` writers are waited for, short
//! transactions, foreign keys on) and never creates, repairs or overwrites a DB file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::{Cause, Error, Result};
use crate::model::{Forward, Project, Row, Status, parse_ipv4};

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

/// What happened to one row we were asked to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Deleted,
    /// Someone else deleted it first: what we wanted.
    AlreadyGone,
    /// SmolVM changed the row after we read it (restarted the VM?): keep it.
    Changed,
    /// A row of this table still refers to it (a foreign key without ON DELETE CASCADE,
    /// from a newer SmolVM): it stays, and the other rows go on.
    Pinned(String),
}

impl Db {
    /// Opens an existing DB, named `path` in messages and opened through `via` (a path
    /// through the data dir's held fd). `read_only` opens it so SQLite cannot write a byte.
    pub fn open(path: &Path, via: &Path, read_only: bool, deadline: Instant) -> Result<Db> {
        let action = || format!("open state DB {}", path.display());
        check_header(via, &action())?;
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
        let tables = {
            let mut stmt = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .map_err(|e| Error::db(action(), e))?;
            stmt.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| Error::db(action(), e))?
        };
        Ok(Db {
            path: path.to_path_buf(),
            conn,
            tables,
            deadline,
        })
    }

    fn has_table(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t == name)
    }

    /// Every VM row, in SmolVM's listing order (`created_at`), with its TAP names; each
    /// row carries `db_index` and the `project` whose DB this is.
    pub fn load(&self, db_index: usize, project: Project) -> Result<Vec<Row>> {
        let action = || format!("read state DB {}", self.path.display());
        if !self.has_table("vms") {
            return Ok(Vec::new());
        }
        let cols = self.columns("vms").map_err(|e| Error::db(action(), e))?;
        let has = |c: &str| cols.iter().any(|x| x == c);
        if !has("id") || !has("status") {
            return Err(Error::corrupt(action(), "table vms has no id/status column"));
        }
        let col = |c: &str| if has(c) { c.to_string() } else { "NULL".to_string() };
        let json = |c: &str, path: &str| {
            if has(c) {
                format!("CASE WHEN json_valid({c}) THEN json_extract({c}, '{path}') END")
            } else {
                "NULL".to_string()
            }
        };
        let time = |c: &str| {
            if has(c) {
                format!("unixepoch({c}, 'subsec')")
            } else {
                "NULL".to_string()
            }
        };
        let sql = format!(
            "SELECT id, status, {pid}, {sock}, {cat}, {uat}, {uunix}, {cunix}, {tap}, {retain}, \
             {ip}, {port}, {backend} FROM vms ORDER BY {order}, rowid",
            pid = col("pid"),
            sock = col("socket_path"),
            cat = col("created_at"),
            uat = col("updated_at"),
            uunix = time("updated_at"),
            cunix = time("created_at"),
            tap = json("network", "$.tap_device"),
            retain = json("config", "$.retain_disk_on_delete"),
            ip = json("network", "$.guest_ip"),
            port = json("network", "$.ssh_host_port"),
            backend = json("config", "$.backend"),
            order = col("created_at"),
        );
        // One read transaction: rows and leases from the same snapshot.
        self.conn
            .execute_batch("BEGIN")
            .map_err(|e| Error::db(action(), e))?;
        let result = self.read_rows(&sql, db_index, project);
        let _ = self.conn.execute_batch("COMMIT");
        result.map_err(|e| Error::db(action(), e))
    }

    fn read_rows(&self, sql: &str, db_index: usize, project: Project) -> rusqlite::Result<Vec<Row>> {
        let mut stmt = self.conn.prepare(sql)?;
        let mut rows = stmt
            .query_map([], |r| {
                let v = |i: usize| lossy(r, i);
                let tap = text(v(8)?);
                Ok(Row {
                    db: db_index,
                    project,
                    id: text(v(0)?).unwrap_or_else(|| "<non-text id>".to_string()),
                    status: Status::parse(&text(v(1)?).unwrap_or_default()),
                    pid: int(v(2)?),
                    socket_path: text(v(3)?),
                    created_at: text(v(4)?),
                    updated_at: text(v(5)?),
                    updated_unix: real(v(6)?),
                    created_unix: real(v(7)?),
                    taps: tap.into_iter().collect(),
                    retain_disk: matches!(v(9)?, Value::Integer(1)),
                    guest_ip: text(v(10)?).and_then(|s| parse_ipv4(&s)),
                    host_port: int(v(11)?).and_then(|p| u16::try_from(p).ok()),
                    backend: text(v(12)?),
                    guest_port: None,
                    vsock_cid: None,
                    browser_sessions: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<Vec<Row>>>()?;
        let by_id: std::collections::HashMap<String, usize> =
            rows.iter().enumerate().map(|(i, r)| (r.id.clone(), i)).collect();
        // The SSH forward (its host port wins over the JSON copy) and the vsock CID.
        if self.has_table("ssh_forwards") {
            let mut stmt = self
                .conn
                .prepare("SELECT vm_id, host_port, guest_port FROM ssh_forwards")?;
            let forwards = stmt
                .query_map([], |r| {
                    Ok((text(lossy(r, 0)?), int(lossy(r, 1)?), int(lossy(r, 2)?)))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (vm, host, guest) in forwards {
                if let Some(&k) = vm.and_then(|v| by_id.get(&v)) {
                    let port = |p: Option<i64>| p.and_then(|p| u16::try_from(p).ok());
                    rows[k].host_port = port(host).or(rows[k].host_port);
                    rows[k].guest_port = port(guest);
                }
            }
        }
        if self.has_table("vsock_cids") {
            let mut stmt = self.conn.prepare("SELECT vm_id, guest_cid FROM vsock_cids")?;
            let cids = stmt
                .query_map([], |r| Ok((text(lossy(r, 0)?), int(lossy(r, 1)?))))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (vm, cid) in cids {
                if let Some(&k) = vm.and_then(|v| by_id.get(&v)) {
                    rows[k].vsock_cid = cid.and_then(|c| u32::try_from(c).ok());
                }
            }
        }
        if self.has_table("browser_sessions") {
            let mut stmt = self
                .conn
                .prepare("SELECT vm_id, session_id FROM browser_sessions")?;
            let pairs = stmt
                .query_map([], |r| Ok((text(lossy(r, 0)?), text(lossy(r, 1)?))))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (vm, sid) in pairs {
                if let (Some(&k), Some(sid)) = (vm.and_then(|v| by_id.get(&v)), sid) {
                    rows[k].browser_sessions.push(sid);
                }
            }
        }
        for table in ["ip_leases", "tap_allocations"] {
            if !self.has_table(table) {
                continue;
            }
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT vm_id, tap_device FROM {table}"))?;
            let pairs = stmt
                .query_map([], |r| Ok((text(lossy(r, 0)?), text(lossy(r, 1)?))))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (vm, tap) in pairs {
                let (Some(vm), Some(tap)) = (vm, tap) else {
                    continue;
                };
                if let Some(&k) = by_id.get(&vm)
                    && !rows[k].taps.contains(&tap)
                {
                    rows[k].taps.push(tap);
                }
            }
        }
        Ok(rows)
    }

    fn columns(&self, table: &str) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare(&format!("PRAGMA table_info({table})"))?;
        stmt.query_map([], |r| r.get::<_, String>(1))?.collect()
    }

    /// In one transaction: deletes the `deletes` rows with their child rows, and marks the
    /// `marks` rows stale as SmolVM does (`status='error', pid=NULL`). Each row is touched
    /// only if it is unchanged since we read it (`updated_at`), so a VM that SmolVM
    /// restarted in the meantime keeps its row as SmolVM wrote it.
    pub fn finish(
        &self,
        deletes: &[(&str, Option<&str>)],
        marks: &[(&str, Option<&str>)],
        now: &str,
    ) -> Result<Vec<RowOutcome>> {
        let action = || format!("update state DB {}", self.path.display());
        let children: Vec<&str> = CHILD_TABLES.into_iter().filter(|t| self.has_table(t)).collect();
        let snapshots = self.has_table("snapshots");
        self.write(|conn| {
            let mut mark = conn.prepare(
                "UPDATE vms SET status = 'error', pid = NULL, updated_at = ?1 \
                 WHERE id = ?2 AND updated_at IS ?3",
            )?;
            for (id, old) in marks {
                mark.execute(params![now, id, old])?;
            }
            let mut out = Vec::with_capacity(deletes.len());
            for (id, updated) in deletes {
                // One savepoint per VM: a row that cannot go leaves the others to finish.
                conn.execute_batch("SAVEPOINT vm")?;
                // A snapshot is the user's data (no foreign key names its VM in any
                // release): the VM it was taken of keeps its row, as a foreign key would.
                if snapshots && snapshot_of(conn, id)? {
                    conn.execute_batch("RELEASE vm")?;
                    out.push(RowOutcome::Pinned("snapshots".into()));
                    continue;
                }
                match delete_vm(conn, &children, id, *updated) {
                    Ok(outcome) => {
                        conn.execute_batch("RELEASE vm")?;
                        out.push(outcome);
                    }
                    Err(e) if is_foreign_key(&e) => {
                        conn.execute_batch("ROLLBACK TO vm; RELEASE vm")?;
                        out.push(RowOutcome::Pinned(self.pinned_by(conn, id)?));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .map_err(|e| Error::db(action(), e))
    }

    /// The table whose rows still refer to VM `id` through a foreign key.
    fn pinned_by(&self, conn: &Connection, id: &str) -> rusqlite::Result<String> {
        // A table we empty first, or whose key cascades, does not pin a row.
        let pins = |t: &&String| t.as_str() != "vms" && !CHILD_TABLES.contains(&t.as_str());
        for table in self.tables.iter().filter(pins) {
            let mut fks = conn.prepare(
                "SELECT \"table\", \"from\" FROM pragma_foreign_key_list(?1) \
                 WHERE on_delete IN ('NO ACTION', 'RESTRICT')",
            )?;
            let refs = fks
                .query_map([table], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (_, column) in refs.iter().filter(|(to, _)| to == "vms") {
                let q = format!("SELECT 1 FROM \"{table}\" WHERE \"{column}\" = ?1");
                if conn.prepare(&q)?.exists([id])? {
                    return Ok(table.clone());
                }
            }
        }
        Ok("an unknown table".into())
    }

    /// Runs `f` inside `BEGIN IMMEDIATE … COMMIT`: the write lock is taken up front (waiting
    /// out SmolVM's writers within the busy timeout), so no deadlock can occur mid-way.
    fn write<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        self.conn.busy_timeout(busy_timeout(self.deadline))?;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn).and_then(|v| self.conn.execute_batch("COMMIT").map(|_| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// Deletes one VM's row and child rows if the row is unchanged since it was read.
fn delete_vm(
    conn: &Connection,
    children: &[&str],
    id: &str,
    updated: Option<&str>,
) -> rusqlite::Result<RowOutcome> {
    let unchanged: Option<bool> = conn
        .prepare_cached("SELECT updated_at IS ?2 FROM vms WHERE id = ?1")?
        .query_row(params![id, updated], |r| r.get(0))
        .optional()?;
    if unchanged == Some(false) {
        return Ok(RowOutcome::Changed);
    }
    // Children first, so a child table whose foreign key has no cascade does not pin it.
    for t in children {
        conn.prepare_cached(&format!("DELETE FROM {t} WHERE vm_id = ?1"))?
            .execute(params![id])?;
    }
    if unchanged.is_none() {
        return Ok(RowOutcome::AlreadyGone);
    }
    conn.prepare_cached("DELETE FROM vms WHERE id = ?1")?
        .execute(params![id])?;
    Ok(RowOutcome::Deleted)
}

/// Does a `snapshots` row name VM `id` as the VM it was taken of?
fn snapshot_of(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM snapshots WHERE vm_id = ?1")?
        .exists(params![id])
}

fn is_foreign_key(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == 787)
}

/// The port forwards of a `~/.smolvm/forwards/<id>.json` (0.0.19+): `[{"host_port": 8080,
/// "guest_port": 80, "transport": "ssh", "pid": 4242}, …]`. Read with SQLite's own JSON
/// functions, in memory; anything that does not fit is skipped.
pub fn parse_forwards(text: &str) -> Vec<Forward> {
    let read = || -> rusqlite::Result<Vec<Forward>> {
        let conn = Connection::open_in_memory()?;
        let mut stmt = conn.prepare(
            "SELECT json_extract(value, '$.host_port'), json_extract(value, '$.guest_port'), \
             json_extract(value, '$.pid') FROM json_each(?1) WHERE json_valid(?1) AND json_type(?1) = 'array'",
        )?;
        let rows = stmt.query_map([text], |r| {
            Ok((int(lossy(r, 0)?), int(lossy(r, 1)?), int(lossy(r, 2)?)))
        })?;
        let port = |p: Option<i64>| p.and_then(|p| u16::try_from(p).ok());
        Ok(rows
            .flatten()
            .filter_map(|(h, g, pid)| {
                Some(Forward {
                    host_port: port(h)?,
                    guest_port: port(g)?,
                    pid: pid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 1),
                })
            })
            .collect())
    };
    read().unwrap_or_default()
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

/// A column's value; text that is not UTF-8 (hostile or damaged) is read with
/// replacement characters, so it fails every name check instead of failing the read.
fn lossy(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Value> {
    Ok(match r.get_ref(i)? {
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        other => Value::try_from(other).unwrap_or(Value::Null),
    })
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s),
        _ => None,
    }
}

fn int(v: Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(i),
        // The guard makes the cast exact: a whole number well inside i64.
        #[allow(clippy::cast_possible_truncation)]
        Value::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
        _ => None,
    }
}

fn real(v: Value) -> Option<f64> {
    match v {
        Value::Real(f) => Some(f),
        Value::Integer(i) => Some(i as f64),
        _ => None,
    }
}

/// `2026-11-28T15:22:55.286913+00:00`, the form SmolVM writes.
pub fn iso8601_utc(unix: Duration) -> String {
    let secs = unix.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // 1..=31 and 1..=12 by construction.
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DB shaped like SmolVM 0.0.36's: an extra `display` column, more child tables
    /// (`vsock_cids`, `tap_allocations`), tables with no foreign key (`snapshots`), and no
    /// foreign keys enforced on the writer's side.
    const SCHEMA_036: &str = "
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

    fn scratch_db(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("smolvm-state-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let c = Connection::open(&p).unwrap();
        c.execute_batch(SCHEMA_036).unwrap();
        p
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    fn count(p: &Path, sql: &str) -> i64 {
        Connection::open(p)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn newer_schemas_are_read_leniently() {
        let p = scratch_db("read");
        let rows = Db::open(&p, &p, true, far())
            .unwrap()
            .load(3, Project::SmolVM)
            .unwrap();
        assert_eq!(rows.len(), 3);
        let a = &rows[0];
        assert_eq!(
            (a.id.as_str(), a.status, a.pid, a.db),
            ("sbx-a", Status::Running, Some(7), 3)
        );
        assert_eq!(a.taps, ["tap2"]);
        assert!(a.retain_disk);
        assert_eq!(a.created_unix, Some(1_795_860_000.0));
        assert_eq!(a.updated_unix, Some(1_795_860_001.5));
        // Bad JSON and a bridge TAP known only to tap_allocations.
        assert_eq!(
            (rows[1].taps.as_slice(), rows[1].retain_disk),
            (&["svmb0a1b2c3d".to_string()][..], false)
        );
        assert_eq!(rows[1].updated_unix, None);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn finish_deletes_unchanged_rows_with_their_children_and_keeps_changed_ones() {
        let p = scratch_db("finish");
        let db = Db::open(&p, &p, false, far()).unwrap();
        let rows = db.load(0, Project::SmolVM).unwrap();
        // SmolVM restarts sbx-b after we read it; sbx-gone was deleted by someone else.
        Connection::open(&p)
            .unwrap()
            .execute(
                "UPDATE vms SET status = 'running', updated_at = 'later' WHERE id = 'sbx-b'",
                [],
            )
            .unwrap();
        let stamp = |i: usize| rows[i].updated_at.as_deref();
        let out = db
            .finish(
                &[("sbx-a", stamp(0)), ("sbx-b", stamp(1)), ("sbx-gone", Some("x"))],
                &[("sbx-c", stamp(2))],
                "2026-11-28T12:00:00.000000+00:00",
            )
            .unwrap();
        assert_eq!(
            out,
            [RowOutcome::Deleted, RowOutcome::Changed, RowOutcome::AlreadyGone]
        );
        assert_eq!(count(&p, "SELECT count(*) FROM vms WHERE id = 'sbx-a'"), 0);
        for t in ["ip_leases", "ssh_forwards", "vsock_cids"] {
            assert_eq!(count(&p, &format!("SELECT count(*) FROM {t}")), 0, "{t}");
        }
        // The changed row and its child rows are kept as SmolVM wrote them.
        assert_eq!(
            count(
                &p,
                "SELECT count(*) FROM vms WHERE id = 'sbx-b' AND status = 'running'"
            ),
            1
        );
        assert_eq!(count(&p, "SELECT count(*) FROM tap_allocations"), 1);
        // Marked as SmolVM's reconcile does; a table without a foreign key is not ours.
        assert_eq!(
            count(
                &p,
                "SELECT count(*) FROM vms WHERE id = 'sbx-c' AND status = 'error'"
            ),
            1
        );
        assert_eq!(count(&p, "SELECT count(*) FROM snapshots"), 1);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_row_a_foreign_key_pins_stays_and_the_others_go() {
        let p = scratch_db("pinned");
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE vm_leases (lease_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL REFERENCES vms(id));
             INSERT INTO vm_leases VALUES ('l1', 'sbx-b');",
        )
        .unwrap();
        drop(c);
        let db = Db::open(&p, &p, false, far()).unwrap();
        let rows = db.load(0, Project::SmolVM).unwrap();
        let stamp = |i: usize| rows[i].updated_at.as_deref();
        let out = db
            .finish(
                &[("sbx-a", stamp(0)), ("sbx-b", stamp(1)), ("sbx-c", stamp(2))],
                &[],
                "2026-11-28T12:00:00.000000+00:00",
            )
            .unwrap();
        assert_eq!(
            out,
            [
                RowOutcome::Deleted,
                RowOutcome::Pinned("vm_leases".into()),
                RowOutcome::Deleted
            ]
        );
        assert_eq!(count(&p, "SELECT count(*) FROM vms"), 1);
        assert_eq!(count(&p, "SELECT count(*) FROM vms WHERE id = 'sbx-b'"), 1);
        // Its child rows went back with the savepoint: the row is whole for a later run.
        assert_eq!(
            count(&p, "SELECT count(*) FROM tap_allocations WHERE vm_id = 'sbx-b'"),
            1
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_row_a_snapshot_was_taken_of_stays_and_the_others_go() {
        let p = scratch_db("snapshot");
        Connection::open(&p)
            .unwrap()
            .execute("INSERT INTO snapshots VALUES ('s2', 'sbx-c')", [])
            .unwrap();
        let db = Db::open(&p, &p, false, far()).unwrap();
        let rows = db.load(0, Project::SmolVM).unwrap();
        let stamp = |i: usize| rows[i].updated_at.as_deref();
        let out = db
            .finish(
                &[("sbx-a", stamp(0)), ("sbx-c", stamp(2))],
                &[],
                "2026-11-28T12:00:00.000000+00:00",
            )
            .unwrap();
        assert_eq!(out, [RowOutcome::Deleted, RowOutcome::Pinned("snapshots".into())]);
        assert_eq!(count(&p, "SELECT count(*) FROM vms WHERE id = 'sbx-c'"), 1);
        assert_eq!(
            count(&p, "SELECT count(*) FROM snapshots"),
            2,
            "snapshots are the user's"
        );
        std::fs::remove_file(&p).unwrap();
    }

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

    #[test]
    fn forwards_json_is_read_and_anything_odd_skipped() {
        let text = r#"[{"host_port": 8080, "guest_port": 80, "transport": "ssh", "pid": 4242},
                       {"host_port": 9090, "guest_port": 90, "transport": "nftables"},
                       {"host_port": 70000, "guest_port": 1}, "junk", {"pid": 1}]"#;
        assert_eq!(
            parse_forwards(text),
            [
                Forward {
                    host_port: 8080,
                    guest_port: 80,
                    pid: Some(4242)
                },
                Forward {
                    host_port: 9090,
                    guest_port: 90,
                    pid: None
                }
            ]
        );
        assert!(parse_forwards("not json").is_empty());
        assert!(parse_forwards(r#"{"host_port": 1}"#).is_empty());
    }

    #[test]
    fn iso_format() {
        assert_eq!(
            iso8601_utc(Duration::from_micros(0)),
            "1970-01-01T00:00:00.000000+00:00"
        );
        // 2026-11-28T15:22:55.286913Z
        let t = Duration::from_micros(1_795_879_375_286_913);
        assert_eq!(iso8601_utc(t), "2026-11-28T15:22:55.286913+00:00");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
