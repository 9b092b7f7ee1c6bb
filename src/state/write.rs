//! Writing a state DB: the stale marks and the final deletes, a row deleted only when
//! unchanged since it was read, its children with it; a row a foreign key without cascade
//! still refers to stays, and the others go on; the ISO-8601 stamps SmolVM writes in
//! `updated_at`. The deletes can run in a transaction left open (`Pending`) while the
//! kernel tears the VMs' TAPs down, and commit only once those are known gone.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{CHILD_TABLES, Db, busy_timeout};
use crate::error::{Error, Result};

/// A row as the writes take it: its id, and the `updated_at` that proves it unchanged
/// since it was read.
pub type Stamped<'a> = (&'a str, Option<&'a str>);

/// What happened to one row we were asked to delete.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Deleted,
    /// Someone else deleted it first: what we wanted.
    AlreadyGone,
    /// SmolVM changed the row after we read it (restarted the VM?): keep it.
    Changed,
    /// A row of this table still refers to it (a foreign key without ON DELETE CASCADE,
    /// from a newer SmolVM): it stays, and the other rows go on.
    Pinned(String),
    /// Its own delete failed (a server's error for this VM alone): the row stays.
    Failed(Error),
}

/// Rows deleted in a transaction left open until the caller knows whether they may go:
/// `commit` writes them with the marks, dropping it rolls every delete back.
pub struct Pending<'d> {
    db: &'d Db,
    out: Vec<RowOutcome>,
    open: bool,
}

impl Pending<'_> {
    /// Marks `marks` stale as SmolVM does (`status='error', pid=NULL`), each only if
    /// unchanged, and commits the marks and the deletes together.
    pub fn commit(mut self, marks: &[Stamped<'_>], now: &str) -> Result<Vec<RowOutcome>> {
        let db = self.db;
        let action = || format!("update state DB {}", db.path.display());
        let mark = || -> rusqlite::Result<()> {
            let mut mark = db.conn.prepare(
                "UPDATE vms SET status = 'error', pid = NULL, updated_at = ?1 \
                 WHERE id = ?2 AND updated_at IS ?3",
            )?;
            for (id, old) in marks {
                mark.execute(params![now, id, old])?;
            }
            db.conn.execute_batch("COMMIT")
        };
        mark().map_err(|e| Error::db(action(), e))?;
        self.open = false;
        Ok(std::mem::take(&mut self.out))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.db.conn.execute_batch("ROLLBACK");
        }
    }
}

/// The final step: rows deleted only when unchanged, all VMs at once, or each VM in its
/// own savepoint when a foreign key refuses.
impl Db {
    /// In one transaction: deletes the `deletes` rows with their child rows, and marks the
    /// `marks` rows stale as SmolVM does (`status='error', pid=NULL`). Each row is touched
    /// only if it is unchanged since we read it (`updated_at`), so a VM that SmolVM
    /// restarted in the meantime keeps its row as SmolVM wrote it.
    pub fn finish(
        &self,
        deletes: &[Stamped<'_>],
        marks: &[Stamped<'_>],
        now: &str,
    ) -> Result<Vec<RowOutcome>> {
        self.delete_open(deletes)?.commit(marks, now)
    }

    /// Deletes as `finish` does, in a `BEGIN IMMEDIATE` transaction that stays open (and
    /// holds SQLite's write lock) until the `Pending` is committed or dropped.
    pub fn delete_open(&self, deletes: &[Stamped<'_>]) -> Result<Pending<'_>> {
        let action = || format!("update state DB {}", self.path.display());
        self.conn
            .busy_timeout(busy_timeout(self.deadline))
            .and_then(|_| self.conn.execute_batch("BEGIN IMMEDIATE"))
            .map_err(|e| Error::db(action(), e))?;
        let mut pending = Pending {
            db: self,
            out: Vec::new(),
            open: true,
        };
        pending.out = self.delete_rows(deletes).map_err(|e| Error::db(action(), e))?;
        Ok(pending)
    }

    fn delete_rows(&self, deletes: &[Stamped<'_>]) -> rusqlite::Result<Vec<RowOutcome>> {
        let conn = &self.conn;
        let children: Vec<&str> = CHILD_TABLES.into_iter().filter(|t| self.has_table(t)).collect();
        let snapshots = self.has_table("snapshots");
        // Every VM at once: a few statements over the targets, in a savepoint. Only a
        // foreign key that refuses (a table of the user's pinning a row) sends it back
        // to one savepoint per VM, so that only that VM stays.
        conn.execute_batch("SAVEPOINT all_vms")?;
        match delete_all(conn, &children, snapshots, deletes) {
            Ok(out) => {
                conn.execute_batch("RELEASE all_vms")?;
                return Ok(out);
            }
            Err(e) if is_foreign_key(&e) => conn.execute_batch("ROLLBACK TO all_vms; RELEASE all_vms")?,
            Err(e) => return Err(e),
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
}

/// Every VM's rows at once, each as `delete_vm` would: a row unchanged since it was read
/// goes with its child rows; a row gone already takes its children with it; a changed row,
/// or one a snapshot was taken of, stays whole. The targets travel as one JSON array.
fn delete_all(
    conn: &Connection,
    children: &[&str],
    snapshots: bool,
    deletes: &[Stamped<'_>],
) -> rusqlite::Result<Vec<RowOutcome>> {
    let mut j = crate::json::Json::new(false);
    j.begin_arr();
    for (id, stamp) in deletes {
        j.begin_arr();
        j.str(id);
        j.opt_str(*stamp);
        j.end_arr();
    }
    j.end_arr();
    let targets = j.finish();
    let pinned = if snapshots {
        "EXISTS (SELECT 1 FROM snapshots s WHERE s.vm_id = t.id)"
    } else {
        "0"
    };
    // t: the targets; state: 0 gone, 1 unchanged, 2 changed, 3 pinned by a snapshot.
    let with = format!(
        "WITH t(id, stamp) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1)), \
         state(id, st) AS (SELECT t.id, CASE WHEN {pinned} THEN 3 WHEN v.id IS NULL THEN 0 \
         WHEN v.updated_at IS t.stamp THEN 1 ELSE 2 END FROM t LEFT JOIN vms v ON v.id = t.id)"
    );
    let states: std::collections::HashMap<String, i64> = conn
        .prepare(&format!("{with} SELECT id, st FROM state"))?
        .query_map([&targets], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for t in children {
        conn.execute(
            &format!("{with} DELETE FROM {t} WHERE vm_id IN (SELECT id FROM state WHERE st IN (0, 1))"),
            [&targets],
        )?;
    }
    conn.execute(
        &format!("{with} DELETE FROM vms WHERE id IN (SELECT id FROM state WHERE st = 1)"),
        [&targets],
    )?;
    Ok(deletes
        .iter()
        .map(|(id, _)| match states.get(*id) {
            Some(1) => RowOutcome::Deleted,
            Some(2) => RowOutcome::Changed,
            Some(3) => RowOutcome::Pinned("snapshots".into()),
            _ => RowOutcome::AlreadyGone,
        })
        .collect())
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
    use super::super::testing::*;
    use super::*;
    use crate::model::Project;

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
    fn open_deletes_roll_back_when_dropped_and_hold_the_write_lock_until_then() {
        let p = scratch_db("open");
        let db = Db::open(&p, &p, false, far()).unwrap();
        let rows = db.load(0, Project::SmolVM).unwrap();
        let a = [("sbx-a", rows[0].updated_at.as_deref())];
        let pending = db.delete_open(&a).unwrap();
        // SmolVM's writers wait: the transaction holds SQLite's write lock.
        let other = Connection::open(&p).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let busy = other.execute("UPDATE vms SET status = 'x' WHERE id = 'sbx-c'", []);
        assert!(busy.is_err(), "another writer got in: {busy:?}");
        drop(pending);
        assert_eq!(count(&p, "SELECT count(*) FROM vms WHERE id = 'sbx-a'"), 1);
        assert_eq!(count(&p, "SELECT count(*) FROM ip_leases"), 1, "its children too");
        // Committed, with the marks in the same transaction.
        let out = db
            .delete_open(&a)
            .unwrap()
            .commit(
                &[("sbx-c", rows[2].updated_at.as_deref())],
                "2026-11-28T12:00:00.000000+00:00",
            )
            .unwrap();
        assert_eq!(out, [RowOutcome::Deleted]);
        assert_eq!(count(&p, "SELECT count(*) FROM vms WHERE id = 'sbx-a'"), 0);
        assert_eq!(
            count(
                &p,
                "SELECT count(*) FROM vms WHERE id = 'sbx-c' AND status = 'error'"
            ),
            1
        );
        std::fs::remove_file(&p).unwrap();
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
