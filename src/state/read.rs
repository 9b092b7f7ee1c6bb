//! Reading a state DB: every release's `vms` schema (columns added by ALTER over the
//! releases, JSON in TEXT columns read leniently) and its child tables, in one read; and
//! a forwards JSON, read with SQLite's own JSON functions.

use rusqlite::Connection;
use rusqlite::types::{Value, ValueRef};

use super::Db;
use crate::error::{Error, Result};
use crate::model::{Forward, Project, Row, Status, parse_ipv4};

/// Reading every release's schema: one consistent read of the rows, leniently.
impl Db {
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

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
}
