//! SmolVM 0.0.8–0.0.29's state in PostgreSQL (`SMOLVM_DATABASE_URL`): the same seven
//! tables as its SQLite DB (TEXT timestamps, JSON in TEXT columns, columns added by
//! ALTER over the releases), read in one read-only snapshot and mirrored into an
//! in-memory SQLite DB, so that one reader (`read.rs`) judges every release's schema
//! wherever it is kept. Writes go to the server: every VM's delete in one statement,
//! each row only while unchanged, its child rows by the schema's cascade; each VM in its
//! own transaction only when the server refuses that statement.

use std::sync::Mutex;
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::types::Value;

use super::{Db, RowOutcome, Stamped};
use crate::error::{Error, Result};
use crate::model::{Project, Row};
use crate::pg;

/// The tables SmolVM keeps, in any release that had PostgreSQL.
const TABLES: [&str; 7] = [
    "vms",
    "ip_leases",
    "ssh_forwards",
    "vsock_cids",
    "tap_allocations",
    "browser_sessions",
    "snapshots",
];

/// PostgreSQL's integer types: mirrored as SQLite integers (`pid`, ports, CIDs).
const INTEGER_OIDS: [u32; 3] = [20, 21, 23];

pub struct PgDb {
    /// The URL as it may be shown (its secrets hidden), with where it came from.
    pub shown: String,
    conn: Mutex<pg::Conn>,
    tables: Vec<String>,
    /// Where it is connected, and whether over TLS (`db:5432, TLS`).
    pub server: String,
}

/// The error of a step against the server, naming the DB by its shown URL.
fn fail(action: &str, shown: &str, e: &pg::Error) -> Error {
    Error::msg(
        format!("{action} SmolVM's state in PostgreSQL ({shown})"),
        e.text.clone(),
    )
}

impl PgDb {
    /// Connects (bounded by `deadline`); `read_only` makes every transaction of the
    /// session read-only on the server's side, so a dry run cannot write a byte.
    pub fn open(
        params: &pg::Params,
        shown: &str,
        read_only: bool,
        deadline: Instant,
        warn: &mut dyn FnMut(String),
    ) -> Result<PgDb> {
        let conn =
            pg::connect(params, read_only, deadline, warn).map_err(|e| fail("connect to", shown, &e))?;
        Ok(PgDb {
            server: format!("{}{}", conn.server, if conn.tls { ", TLS" } else { "" }),
            shown: shown.to_string(),
            conn: Mutex::new(conn),
            tables: Vec::new(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, pg::Conn> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every VM row with its child tables' facts, from one snapshot of the server.
    pub fn load(&mut self, db_index: usize, project: Project) -> Result<Vec<Row>> {
        let shown = self.shown.clone();
        let mirror = {
            let mut conn = self.conn();
            let q = |c: &mut pg::Conn, sql: &str, p: &[Option<&str>]| {
                c.query(sql, p).map_err(|e| fail("read", &shown, &e))
            };
            q(&mut conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", &[])?;
            let read = (|| {
                let list = format!("{{{}}}", TABLES.join(","));
                let present = q(
                    &mut conn,
                    "SELECT t FROM unnest($1::text[]) t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
                    &[Some(&list)],
                )?;
                let mut tables = Vec::new();
                for name in present
                    .rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                {
                    let rows = q(&mut conn, &format!("SELECT * FROM {}", quote(&name)), &[])?;
                    tables.push((name, rows));
                }
                Ok(tables)
            })();
            let _ = conn.query("COMMIT", &[]);
            read?
        };
        self.tables = mirror.iter().map(|(t, _)| t.clone()).collect();
        let mem = mirror_into_sqlite(&mirror)
            .map_err(|e| Error::db(format!("read SmolVM's state in PostgreSQL ({shown})"), e))?;
        Db::mirror(&shown, mem)?.load(db_index, project)
    }

    /// Marks the `marks` rows stale as SmolVM does, then deletes each of `deletes` (its
    /// child rows by the cascade, its browser sessions beside it) only while its
    /// `updated_at` is the one read and no snapshot was taken of it. All the deletes go
    /// as one statement and one commit; when the server refuses it (a foreign key without
    /// cascade pins a row), each VM goes again in its own transaction, so only the VM
    /// that cannot go keeps its row and the others go on.
    pub fn finish(
        &self,
        deletes: &[Stamped<'_>],
        marks: &[Stamped<'_>],
        now: &str,
    ) -> Result<Vec<RowOutcome>> {
        let has = |t: &str| self.tables.iter().any(|x| x == t);
        let (snapshots, sessions) = (has("snapshots"), has("browser_sessions"));
        let mut conn = self.conn();
        let failed = |e: &pg::Error| fail("update", &self.shown, e);
        if !marks.is_empty() {
            const MARK: &str = "UPDATE vms SET status = 'error', pid = NULL, updated_at = $3 \
                FROM unnest($1::text[], $2::text[]) AS t(id, stamp) \
                WHERE vms.id = t.id AND vms.updated_at IS NOT DISTINCT FROM t.stamp";
            let (ids, stamps) = arrays(marks);
            conn.query(MARK, &[Some(&ids), Some(&stamps), Some(now)])
                .map_err(|e| failed(&e))?;
        }
        if deletes.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, stamps) = arrays(deletes);
        match conn.query(&delete_all_sql(snapshots, sessions), &[Some(&ids), Some(&stamps)]) {
            Ok(rows) if rows.rows.len() == deletes.len() => {
                return Ok(rows.rows.iter().map(|r| outcome(r)).collect());
            }
            Ok(_) => {}
            Err(e) if !matches!(e.kind, pg::Kind::Server { .. }) => return Err(failed(&e)),
            Err(_) => {}
        }
        let one = delete_sql(snapshots, sessions);
        let stmts: Vec<(&str, Vec<Option<String>>)> = deletes
            .iter()
            .map(|(id, old)| (one.as_str(), vec![Some(id.to_string()), old.map(str::to_string)]))
            .collect();
        let results = conn.pipeline(&stmts).map_err(|e| failed(&e))?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(rows) => outcome(rows.rows.first().map_or(&[][..], Vec::as_slice)),
                Err(e) => refused(e, &self.shown),
            })
            .collect())
    }
}

/// Two PostgreSQL text arrays: the ids, and the stamps that prove each row unchanged.
fn arrays(rows: &[Stamped<'_>]) -> (String, String) {
    let ids = text_array(rows.iter().map(|(id, _)| Some(*id)));
    let stamps = text_array(rows.iter().map(|(_, s)| *s));
    (ids, stamps)
}

/// A text array literal (`{"a","b",NULL}`), every element quoted and escaped.
fn text_array<'a>(items: impl Iterator<Item = Option<&'a str>>) -> String {
    let quoted: Vec<String> = items
        .map(|v| match v {
            None => "NULL".to_string(),
            Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        })
        .collect();
    format!("{{{}}}", quoted.join(","))
}

/// Every VM's delete in one statement: each row only when unchanged and no snapshot
/// names it, its browser sessions with it; one line per VM, in the order given, as
/// `delete_sql` answers.
fn delete_all_sql(snapshots: bool, browser_sessions: bool) -> String {
    let pinned = if snapshots {
        " AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.vm_id = v.id)"
    } else {
        ""
    };
    let sessions = if browser_sessions {
        ", b AS (DELETE FROM browser_sessions WHERE vm_id IN (SELECT id FROM d))"
    } else {
        ""
    };
    let snapshot = if snapshots {
        "EXISTS (SELECT 1 FROM snapshots s WHERE s.vm_id = t.id)"
    } else {
        "false"
    };
    format!(
        "WITH t AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(id, stamp, n)), \
         d AS (DELETE FROM vms v USING t WHERE v.id = t.id AND v.updated_at IS NOT DISTINCT FROM t.stamp{pinned} \
         RETURNING v.id){sessions} \
         SELECT (SELECT count(*) FROM d WHERE d.id = t.id), EXISTS (SELECT 1 FROM vms WHERE vms.id = t.id), \
         {snapshot} FROM t ORDER BY t.n"
    )
}

/// One VM's delete: the row only when unchanged and no snapshot names it (a snapshot is
/// the user's data), its browser sessions with it (no foreign key names them), its
/// other child rows by `ON DELETE CASCADE`. The outer query sees the statement's
/// snapshot, so it tells a row already gone from one that changed.
fn delete_sql(snapshots: bool, browser_sessions: bool) -> String {
    let pinned = if snapshots {
        " AND NOT EXISTS (SELECT 1 FROM snapshots WHERE vm_id = $1)"
    } else {
        ""
    };
    let sessions = if browser_sessions {
        ", b AS (DELETE FROM browser_sessions WHERE vm_id IN (SELECT id FROM d))"
    } else {
        ""
    };
    let snapshot = if snapshots {
        "EXISTS (SELECT 1 FROM snapshots WHERE vm_id = $1)"
    } else {
        "false"
    };
    format!(
        "WITH d AS (DELETE FROM vms WHERE id = $1 AND updated_at IS NOT DISTINCT FROM $2{pinned} RETURNING id){sessions} \
         SELECT (SELECT count(*) FROM d), EXISTS (SELECT 1 FROM vms WHERE id = $1), {snapshot}"
    )
}

/// A VM's outcome from its line of the answer: deleted, gone already, kept by a
/// snapshot, or changed since it was read.
fn outcome(row: &[Option<String>]) -> RowOutcome {
    let col = |i: usize| row.get(i).and_then(Option::as_deref);
    match (col(0), col(1), col(2)) {
        (Some("1"), _, _) => RowOutcome::Deleted,
        (_, Some("f"), _) => RowOutcome::AlreadyGone,
        (_, _, Some("t")) => RowOutcome::Pinned("snapshots".into()),
        _ => RowOutcome::Changed,
    }
}

/// A VM whose own delete the server refused: pinned by a foreign key without cascade
/// (from a table SmolVM never made), or failed.
fn refused(e: pg::Error, shown: &str) -> RowOutcome {
    match e.kind {
        pg::Kind::Server { sqlstate, table } if sqlstate == "23503" => {
            RowOutcome::Pinned(table.unwrap_or_else(|| "an unknown table".into()))
        }
        _ => RowOutcome::Failed(fail("update", shown, &e)),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The server's tables as an in-memory SQLite DB of the same names and columns (the
/// integer columns as integers, everything else as text).
fn mirror_into_sqlite(tables: &[(String, pg::Rows)]) -> rusqlite::Result<Connection> {
    super::memory::use_process_allocator();
    let mem = Connection::open_in_memory()?;
    mem.execute_batch("BEGIN")?;
    for (name, rows) in tables {
        let cols: Vec<String> = rows
            .columns
            .iter()
            .map(|c| {
                let ty = if INTEGER_OIDS.contains(&c.type_oid) {
                    "INTEGER"
                } else {
                    "TEXT"
                };
                format!("{} {ty}", quote(&c.name))
            })
            .collect();
        mem.execute_batch(&format!("CREATE TABLE {} ({})", quote(name), cols.join(", ")))?;
        let marks = vec!["?"; rows.columns.len()].join(", ");
        let mut insert = mem.prepare(&format!("INSERT INTO {} VALUES ({marks})", quote(name)))?;
        for row in &rows.rows {
            let values = row.iter().zip(&rows.columns).map(|(v, c)| match v {
                None => Value::Null,
                Some(s) if INTEGER_OIDS.contains(&c.type_oid) => {
                    s.parse().map_or_else(|_| Value::Text(s.clone()), Value::Integer)
                }
                Some(s) => Value::Text(s.clone()),
            });
            insert.execute(rusqlite::params_from_iter(values))?;
        }
    }
    mem.execute_batch("COMMIT")?;
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delete_adapts_to_the_tables_a_release_made() {
        let full = delete_sql(true, true);
        assert!(full.contains("NOT EXISTS (SELECT 1 FROM snapshots WHERE vm_id = $1) RETURNING id)"));
        assert!(full.contains("DELETE FROM browser_sessions WHERE vm_id IN (SELECT id FROM d)"));
        let bare = delete_sql(false, false);
        assert!(
            !bare.contains("snapshots") && !bare.contains("browser_sessions"),
            "{bare}"
        );
        assert!(bare.ends_with("EXISTS (SELECT 1 FROM vms WHERE id = $1), false"));
    }

    #[test]
    fn outcomes_from_the_servers_answer() {
        let row =
            |a: &str, b: &str, c: &str| vec![Some(a.to_string()), Some(b.to_string()), Some(c.to_string())];
        assert_eq!(outcome(&row("1", "t", "f")), RowOutcome::Deleted);
        assert_eq!(outcome(&row("0", "f", "f")), RowOutcome::AlreadyGone);
        assert_eq!(
            outcome(&row("0", "t", "t")),
            RowOutcome::Pinned("snapshots".into())
        );
        assert_eq!(outcome(&row("0", "t", "f")), RowOutcome::Changed);
        let fk = pg::Error {
            kind: pg::Kind::Server {
                sqlstate: "23503".into(),
                table: Some("vm_leases".into()),
            },
            text: "violates foreign key".into(),
        };
        assert_eq!(refused(fk, "u"), RowOutcome::Pinned("vm_leases".into()));
        // Any other refusal of one VM's delete fails that VM alone, naming the DB.
        let locked = pg::Error {
            kind: pg::Kind::Timeout,
            text: "canceling statement due to lock timeout".into(),
        };
        match refused(locked, "SMOLVM_DATABASE_URL=postgresql://u@h/db") {
            RowOutcome::Failed(e) => assert_eq!(
                e.to_string(),
                "cannot update SmolVM's state in PostgreSQL (SMOLVM_DATABASE_URL=postgresql://u@h/db): \
                 canceling statement due to lock timeout"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arrays_quote_and_escape_every_element() {
        assert_eq!(
            text_array([Some("vm-1"), None, Some(r#"a"b\c"#)].into_iter()),
            r#"{"vm-1",NULL,"a\"b\\c"}"#
        );
        assert_eq!(text_array(std::iter::empty()), "{}");
    }

    #[test]
    fn a_mirror_keeps_integers_and_text_apart() {
        let rows = pg::Rows {
            columns: vec![
                pg::Column {
                    name: "id".into(),
                    type_oid: 25,
                },
                pg::Column {
                    name: "pid".into(),
                    type_oid: 23,
                },
            ],
            rows: vec![
                vec![Some("sbx-a".into()), Some("4242".into())],
                vec![Some("sbx-b".into()), None],
            ],
            affected: 0,
        };
        let mem = mirror_into_sqlite(&[("vms".into(), rows)]).unwrap();
        let (t, pid): (String, i64) = mem
            .query_row("SELECT typeof(pid), pid FROM vms WHERE id = 'sbx-a'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((t.as_str(), pid), ("integer", 4242));
    }
}
