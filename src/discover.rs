//! Gathers every fact cleanup decides on, once: the rows of each state DB (SmolVM's and
//! Celesto's), the processes rows point at and every VMM-looking process, one link dump,
//! one dump of both projects' shared nft tables, the table list, and which VM sockets
//! are still served. Reads only; decides nothing (that is `reconcile`).
//!
//! Longer than ~500 lines: one function per fact, in the order `discover` gathers them
//! (some under the lock, some bounded on a worker thread); split, that order would scatter.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Fault};
use crate::files;
use crate::locate::DataDir;
use crate::model::{
    DirListing, ForwardsListing, ForwardsRecord, Home, Observed, ProcInfo, Project, Role, View, data_file_id,
    forward_file_id, libkrun_config_id, socket_id,
};
use crate::netlink::{self, link, nft};
use crate::procfs::{Locks, OwnDirs, Procfs};
use crate::state::{Db, PgDb, Store, is_corrupt};

pub struct Discovery {
    pub obs: Observed,
    /// The opened DBs, by `Row::db` (None: that DB could not be used).
    pub dbs: Vec<Option<Store>>,
    /// Every state DB looked at, with why it could not be read (None: read).
    pub db_status: Vec<DbStatus>,
    /// State DBs that exist but could not be read for a reason other than corruption
    /// (locked past the timeout, permissions, I/O): the run cannot vouch for their VMs.
    pub unread: Vec<String>,
    pub warnings: Vec<String>,
    /// The data dirs and the socket dir, each opened once: every later read and removal
    /// goes through these fds.
    pub roots: files::Roots,
    /// Set when the link dump failed: TAP deletion cannot be decided.
    pub link_error: Option<Error>,
    /// Set when the nft dump failed: rule deletion cannot be decided.
    pub nft_error: Option<Error>,
    pub procfs: Procfs,
    /// Why the run cannot judge anything at all (SmolVM's PostgreSQL state could not be
    /// read): nothing is changed, and the report says so.
    pub fatal: Option<String>,
    /// How long each fact took to gather.
    pub laps: crate::report::Laps,
}

/// A state DB that exists, whose it is, and why it could not be read (None: read).
pub struct DbStatus {
    /// How it is shown: a file's path, a PostgreSQL URL with its secrets hidden.
    pub name: String,
    /// The file, for a SQLite DB.
    pub path: Option<PathBuf>,
    /// Where a server DB was reached (`127.0.0.1:5432, TLS`).
    pub server: Option<String>,
    pub project: Project,
    pub error: Option<String>,
}

/// SmolVM 0.0.8–0.0.29's state in PostgreSQL, when this host's SmolVM uses it.
pub struct PgSource {
    /// The URL as given (it may hold a password: never shown).
    pub url: String,
    /// As it may be shown, with where it came from (`SMOLVM_DATABASE_URL=postgresql://…`).
    pub shown: String,
    pub whence: &'static str,
    /// The data dir SmolVM keeps those VMs' files in on this host.
    pub dir: PathBuf,
    /// Other hosts may share the DB (unless `--database-is-local`): a row is this
    /// host's only when something here names it.
    pub shared: bool,
}

pub struct Config<'a> {
    pub data_dirs: &'a [DataDir],
    /// The users' port-forward dirs (`~/.smolvm/forwards`, …).
    pub forwards_dirs: Vec<PathBuf>,
    /// SmolVM's PostgreSQL state, when this host's SmolVM keeps it there.
    pub postgres: Option<PgSource>,
    /// Other data dirs (either project's), read only to know which VMs they own.
    pub other_dirs: &'a [DataDir],
    /// Who may own a data dir: root, the user we run as, and under sudo the invoking user.
    pub owners: Vec<u32>,
    pub socket_dir: PathBuf,
    pub read_only: bool,
    pub deadline: Instant,
    pub proc_root: PathBuf,
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The first step, before the run's lock: the data dirs and the socket dir opened (and
/// judged) once; everything else is read by `discover`, under the lock.
pub fn open(cfg: &Config<'_>) -> Discovery {
    let mut d = Discovery {
        obs: Observed {
            socket_dir: cfg.socket_dir.clone(),
            data_dirs: cfg.data_dirs.iter().map(|d| d.dir.clone()).collect(),
            own_pid: rustix::process::getpid().as_raw_nonzero().get(),
            ..Observed::default()
        },
        dbs: Vec::new(),
        db_status: Vec::new(),
        unread: Vec::new(),
        warnings: Vec::new(),
        roots: files::Roots::default(),
        link_error: None,
        nft_error: None,
        procfs: Procfs::new(&cfg.proc_root, now_unix()),
        fatal: None,
        laps: crate::report::Laps::default(),
    };
    open_roots(&mut d, cfg);
    d
}

/// Reads everything but the claims, which it leaves asked for: `claims` gives them (the
/// caller judges meanwhile, on the bet that there are none).
#[must_use = "the claims are still to be read (`claims`)"]
pub fn discover(d: &mut Discovery, cfg: &Config<'_>) -> Locks {
    d.laps = crate::report::Laps::default();
    // The claims are read only once the network is listed, so that a TAP seen was made
    // after any claim on it was taken (SmolVM claims first); the reader's wait is paid
    // from now, while the rest is read and judged.
    let mut locks = Locks::start(&d.procfs);
    read_dbs(d, cfg);
    read_other_dbs(d, cfg);
    d.laps.lap("discover.dbs");
    for row in &d.obs.rows {
        if let Some(pid) = row.pid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0)
            && let Some(info) = d.procfs.read(pid)
        {
            d.obs.procs.insert(pid, info);
        }
    }
    d.obs.vmms = d.procfs.scan_vmms();
    d.obs.pid_view = d.procfs.pid_view();
    d.laps.lap("discover.processes");
    read_network(d, cfg);
    d.laps.lap("discover.network");
    locks.ask();
    list_files(d, cfg);
    list_forwards(d, cfg);
    d.laps.lap("discover.files");
    read_views(d, cfg);
    read_file_owners(d);
    d.laps.lap("discover.views");
    locks
}

/// The claim files held in data dirs that are not this run's: true when there is any, and
/// so what was judged without them must be judged again. Looked for in every process's
/// fds while `locks` (`discover`'s) still waits for the kernel, from `locks` once it does
/// not: the first answer that is ready, both read after the network was listed.
pub fn claims(d: &mut Discovery, cfg: &Config<'_>, locks: Locks) -> bool {
    let own = OwnDirs::new(cfg.data_dirs.iter().map(|dd| dd.dir.as_path()));
    d.obs.foreign_claims = match d
        .procfs
        .scan_foreign_claims(&own, d.obs.own_pid, &|| locks.warm())
    {
        Some(claims) => claims,
        None => d.procfs.foreign_claims(&locks.read(), &own, d.obs.own_pid),
    };
    !d.obs.foreign_claims.is_empty()
}

/// Each VMM's, sidecar's and tunnel's view of the host (`Procfs::view`), read on a
/// worker thread: a path seen through another mount namespace can block (a FUSE mount
/// there that does not answer), so a view that has not answered within a quarter of the
/// run's time left is "cannot tell" and the run goes on (the worker is left behind).
fn read_views(d: &mut Discovery, cfg: &Config<'_>) {
    let tunnels: std::collections::BTreeSet<i32> = d
        .obs
        .forwards
        .iter()
        .flat_map(|fl| &fl.records)
        .flat_map(|r| &r.forwards)
        .filter_map(|f| f.pid)
        .collect();
    let scanned: std::collections::BTreeSet<i32> = d.obs.vmms.iter().map(|p| p.pid).collect();
    let mut asked: Vec<ProcInfo> = d.obs.vmms.clone();
    asked.extend(
        d.obs
            .procs
            .values()
            .filter(|p| (p.role.is_some() || tunnels.contains(&p.pid)) && !scanned.contains(&p.pid))
            .cloned(),
    );
    if asked.is_empty() {
        return;
    }
    let now = Instant::now();
    let until = now + cfg.deadline.saturating_duration_since(now) / 4;
    let (tx, rx) = std::sync::mpsc::channel();
    let procfs = d.procfs.clone();
    let dirs: Vec<PathBuf> = view_dirs(cfg)
        .into_iter()
        .map(std::path::Path::to_path_buf)
        .collect();
    let pids: Vec<i32> = asked.iter().map(|p| p.pid).collect();
    let own: Vec<PathBuf> = cfg.data_dirs.iter().map(|dd| dd.dir.clone()).collect();
    let worker = std::thread::Builder::new().name("views".into()).spawn(move || {
        let dirs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
        let own = OwnDirs::new(own.iter().map(PathBuf::as_path));
        for p in &asked {
            let view = procfs.view(p, &dirs);
            let home = (view == View::Ours && p.role == Some(Role::Vmm))
                .then(|| procfs.home(p, &own))
                .flatten();
            if tx.send((p.pid, (view, home))).is_err() {
                return;
            }
        }
    });
    let mut views: BTreeMap<i32, (View, Option<Home>)> = BTreeMap::new();
    if worker.is_ok() {
        while views.len() < pids.len() {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok((pid, seen)) => {
                    views.insert(pid, seen);
                }
                Err(_) => break,
            }
        }
    }
    let late = View::Unknown(
        "its view of the host did not answer in time (a stuck filesystem in its namespace?)".into(),
    );
    let view_of = |pid: i32| views.get(&pid).cloned().unwrap_or_else(|| (late.clone(), None));
    for p in &mut d.obs.vmms {
        (p.view, p.home) = view_of(p.pid);
    }
    for (pid, p) in &mut d.obs.procs {
        if p.role.is_some() || tunnels.contains(pid) {
            (p.view, p.home) = view_of(*pid);
        }
    }
}

/// Who owns each listed file that no row's id names (a row's files are its data dir's):
/// evidence of a VM with no row counts only for files of its own owner.
fn read_file_owners(d: &mut Discovery) {
    let obs = &mut d.obs;
    let rows: std::collections::HashSet<&str> = obs
        .rows
        .iter()
        .chain(&obs.other_rows)
        .map(|r| r.id.as_str())
        .collect();
    let mut wanted: Vec<(&std::path::Path, String)> = Vec::new();
    for n in &obs.socket_names {
        if socket_id(n)
            .or_else(|| libkrun_config_id(n))
            .is_some_and(|id| !rows.contains(id))
        {
            wanted.push((&obs.socket_dir, n.clone()));
        }
    }
    for dl in &obs.data_listing {
        for (sub, names) in dl.by_sub() {
            for n in names
                .iter()
                .filter(|n| data_file_id(sub, n).is_some_and(|id| !rows.contains(id)))
            {
                let rel = if sub.is_empty() {
                    n.clone()
                } else {
                    format!("{sub}/{n}")
                };
                wanted.push((&dl.dir, rel));
            }
        }
    }
    for fl in &obs.forwards {
        for n in fl
            .names
            .iter()
            .filter(|n| forward_file_id(n).is_some_and(|id| !rows.contains(id)))
        {
            wanted.push((&fl.dir, n.clone()));
        }
    }
    let owners: Vec<(PathBuf, u32)> = wanted
        .into_iter()
        .filter_map(|(dir, rel)| Some((dir.join(&rel), d.roots.owner(dir, &rel)?)))
        .collect();
    obs.owners.extend(owners);
}

/// The directories a process must see as we do to be one of ours (`Procfs::view`).
fn view_dirs<'a>(cfg: &'a Config<'_>) -> Vec<&'a std::path::Path> {
    let mut dirs: Vec<&std::path::Path> = cfg.data_dirs.iter().map(|dd| dd.dir.as_path()).collect();
    dirs.push(&cfg.socket_dir);
    dirs
}

/// The port-forward dirs: their files, each `<id>.json`'s forwards, and the processes at
/// the tunnel pids they record (judged in `reconcile`, like a row's pid).
fn list_forwards(d: &mut Discovery, cfg: &Config<'_>) {
    for dir in &cfg.forwards_dirs {
        if let Err(why) = d.roots.open(dir, Some(&cfg.owners)) {
            d.warnings
                .push(format!("{why}: its port-forward state is left alone"));
            continue;
        }
        let names: Vec<String> = d
            .roots
            .list(dir, "")
            .into_iter()
            .filter(|n| forward_file_id(n).is_some())
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut records = Vec::new();
        for n in names.iter().filter(|n| n.ends_with(".json")) {
            let (Some(id), Some((bytes, written, owner))) =
                (forward_file_id(n), d.roots.read(dir, n, 1 << 20))
            else {
                continue;
            };
            let forwards = crate::state::parse_forwards(&String::from_utf8_lossy(&bytes));
            for pid in forwards.iter().filter_map(|f| f.pid) {
                if let Some(info) = d.procfs.read(pid) {
                    d.obs.procs.insert(pid, info);
                }
            }
            records.push(ForwardsRecord {
                id: id.to_string(),
                written,
                owner,
                forwards,
            });
        }
        d.obs.forwards.push(ForwardsListing {
            dir: dir.clone(),
            owner: d
                .roots
                .get(dir)
                .and_then(|fd| rustix::fs::fstat(fd).ok())
                .map(|st| st.st_uid),
            names,
            records,
        });
    }
}

/// The subdirectories of a data dir that hold VMs' files. Each is resolved once (a
/// symlink followed only when that is safe, see `files::Roots`).
const DATA_SUBDIRS: [&str; 6] = [
    "disks",
    "locks",
    "locks/resources",
    "firmware",
    "ssh-known-hosts",
    "browser-sessions",
];

/// Opens every data dir and the socket dir once. A data dir behind a symlink that is not
/// followed, or that someone other than root or the user cleanup runs for owns, is
/// refused: nothing in it is read or touched, and the run is incomplete.
fn open_roots(d: &mut Discovery, cfg: &Config<'_>) {
    for dd in cfg.data_dirs {
        if let Err(why) = d.roots.open(&dd.dir, Some(&cfg.owners)) {
            d.warnings
                .push(format!("{why}: refusing to use it as a data dir"));
            d.unread.push(format!("{why}: refused as a data dir"));
            d.obs.rows_incomplete = true;
        }
        if let Some(st) = d.roots.get(&dd.dir).and_then(|fd| rustix::fs::fstat(fd).ok()) {
            d.obs.dir_owners.insert(dd.dir.clone(), st.st_uid);
        }
        if d.roots.get(&dd.dir).is_some_and(on_network_fs) {
            d.obs.remote_dirs.insert(dd.dir.clone());
        }
    }
    if let Err(why) = d.roots.open(&cfg.socket_dir, None) {
        d.warnings
            .push(format!("{why}: refusing to use it as the socket dir"));
        d.unread.push(format!("{why}: refused as the socket dir"));
    }
}

/// Is this directory on a filesystem other hosts may write too (NFS, SMB/CIFS, Ceph,
/// GlusterFS/FUSE, 9p, Lustre, GPFS, OCFS2, GFS2, AFS)?
fn on_network_fs(fd: &rustix::fd::OwnedFd) -> bool {
    const NETWORK: [u64; 12] = [
        0x6969,      // NFS
        0x517B,      // SMB
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x00C3_6400, // Ceph
        0x6573_5546, // FUSE (sshfs, GlusterFS, …)
        0x0102_1997, // 9p
        0x0BD0_0BD0, // Lustre
        0x4750_4653, // GPFS
        0x7461_636F, // OCFS2
        0x0116_1970, // GFS2
        0x5346_414F, // AFS
    ];
    // f_type is signed on some targets, unsigned on others.
    rustix::fs::fstatfs(fd).is_ok_and(|st| u64::try_from(st.f_type).is_ok_and(|t| NETWORK.contains(&t)))
}

/// Every state DB that exists: its rows, or why it could not be read (corrupt, or not
/// read this time, which makes the run incomplete).
fn read_dbs(d: &mut Discovery, cfg: &Config<'_>) {
    if let Some(src) = &cfg.postgres {
        read_postgres(d, cfg, src);
    }
    let held: Vec<&DataDir> = cfg
        .data_dirs
        .iter()
        .filter(|dd| d.roots.get(&dd.dir).is_some())
        .collect();
    for dd in held {
        for (project, path) in &dd.dbs {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // No DB means no rows, not an error.
            let via = match d.roots.db_path(&dd.dir, name) {
                Ok(None) => continue,
                Ok(Some(via)) if !via.exists() => continue,
                Ok(Some(via)) => Ok(via),
                Err(why) => Err(Error::msg(format!("open state DB {}", path.display()), why)),
            };
            let index = d.dbs.len();
            d.obs.db_dirs.push(dd.dir.clone());
            let opened = via.and_then(|via| {
                let db = Db::open(path, &via, cfg.read_only, cfg.deadline)?;
                let rows = db.load(index, *project)?;
                Ok((db, rows))
            });
            let status = |error| DbStatus {
                name: path.display().to_string(),
                path: Some(path.clone()),
                server: None,
                project: *project,
                error,
            };
            match opened {
                Ok((db, rows)) => {
                    d.obs.rows.extend(rows);
                    d.dbs.push(Some(Store::Sqlite(db)));
                    d.db_status.push(status(None));
                }
                Err(e) => {
                    d.db_status.push(status(Some(e.to_string())));
                    // Its rows are unknown, whatever the reason: the VMs they would keep
                    // must not be taken for leftovers. A damaged DB's own line says how to
                    // recover (a file named by --db is not a DB to recover from).
                    if is_corrupt(&e) && !dd.db_named {
                        d.warnings.push(format!(
                            "{e}; the file is left untouched and no leftover is taken this run. \
                             To recover, back it up, remove it and run cleanup again (mv {0} \
                             {0}.bak), which reclaims from the live system",
                            path.display()
                        ));
                    } else {
                        d.warnings.push(format!("{e}; its VMs are skipped this run"));
                    }
                    d.unread.push(e.to_string());
                    d.obs.rows_incomplete = true;
                    d.dbs.push(None);
                }
            }
        }
    }
}

/// SmolVM's rows in PostgreSQL, read in one snapshot. Any failure (a bad URL, the
/// server down, a refused login or TLS, no such database) is fatal: those rows are
/// unknown, and without them nothing on this host can be told apart.
fn read_postgres(d: &mut Discovery, cfg: &Config<'_>, src: &PgSource) {
    let status = |error, server| DbStatus {
        name: src.shown.clone(),
        path: None,
        server,
        project: Project::SmolVM,
        error,
    };
    let var = |k: &str| std::env::var(k).ok();
    let env = crate::pg::conninfo::Env {
        var: &var,
        os_user: crate::locate::os_user(),
        home: crate::locate::home(),
    };
    let index = d.dbs.len();
    let mut warnings = Vec::new();
    let read = crate::pg::conninfo::parse(&src.url, &env)
        .map_err(|e| {
            Error::msg(
                format!("use SmolVM's state in PostgreSQL ({}{})", src.whence, src.shown),
                format!("bad URL: {e}"),
            )
        })
        .and_then(|params| {
            let named = format!("{}{}", src.whence, src.shown);
            let mut db = PgDb::open(&params, &named, cfg.read_only, cfg.deadline, &mut |w| {
                warnings.push(w)
            })?;
            let rows = db.load(index, Project::SmolVM)?;
            Ok((db, rows))
        });
    d.warnings.extend(warnings);
    match read {
        Ok((db, rows)) => {
            d.obs.rows.extend(rows);
            d.obs.db_dirs.push(src.dir.clone());
            if src.shared {
                d.obs.shared_dbs.insert(index);
            }
            d.db_status.push(status(None, Some(db.server.clone())));
            d.dbs.push(Some(Store::Postgres(db)));
        }
        Err(e) => {
            d.obs.db_dirs.push(src.dir.clone());
            d.dbs.push(None);
            d.db_status.push(status(Some(e.to_string()), None));
            d.fatal = Some(format!(
                "{e}; nothing was changed (the VMs whose rows are there cannot be told from leftovers)"
            ));
        }
    }
}

/// The rows of the other data dirs' DBs (read-only): their VMs are someone else's. One
/// that cannot be read hides VMs that may be anyone's: no rowless leftover is taken.
fn read_other_dbs(d: &mut Discovery, cfg: &Config<'_>) {
    for (project, path) in cfg.other_dirs.iter().flat_map(|dd| &dd.dbs) {
        if !path.is_file() {
            continue;
        }
        match Db::open(path, path, true, cfg.deadline).and_then(|db| db.load(usize::MAX, *project)) {
            Ok(rows) => {
                d.obs.other_rows.extend(rows);
                if let Some(dir) = path.parent()
                    && let Ok(st) = rustix::fs::stat(dir)
                {
                    d.obs.dir_owners.insert(dir.to_path_buf(), st.st_uid);
                }
            }
            Err(e) => {
                d.warnings.push(format!(
                    "{e}; the VMs of that data dir cannot be told apart from leftovers, so none is taken"
                ));
                d.obs.rows_incomplete = true;
            }
        }
    }
}

/// One link dump and one dump of both projects' shared nft tables.
fn read_network(d: &mut Discovery, cfg: &Config<'_>) {
    let deadline = cfg.deadline;
    let list_links = move || {
        netlink::Socket::route(deadline)
            .map_err(Fault::from)
            .and_then(|mut s| link::dump(&mut s))
    };
    // Two subsystems, two sockets: the links are listed beside the nft dump (the longer).
    let (links, dump) = beside("links", list_links, || {
        netlink::Socket::netfilter(deadline)
            .map_err(Fault::from)
            .and_then(|mut s| nft::dump_shared(&mut s))
            .map_err(|e| Error::sys("list nftables rules", e))
    });
    match links {
        Ok(links) => d.obs.links = links,
        Err(e) => d.link_error = Some(Error::sys("list network links", e)),
    }
    match dump {
        Ok(dump) => {
            d.obs.tables = dump.tables;
            d.obs.rules = dump.rules;
            d.obs.elems = dump.elems;
        }
        Err(e) => d.nft_error = Some(e),
    }
}

/// `job` on a helper thread while this one does `here`, or on this thread once `here` is
/// done if the helper has not started it by then: exactly once, by whichever comes to it
/// first. A new thread can wait 1-4 ms for a CPU here (under nested virtualisation an idle
/// CPU wakes slowly), so a late helper costs nothing, and nobody waits for it to start.
fn beside<T: Send + 'static, U>(
    name: &str,
    job: impl FnOnce() -> T + Send + Clone + 'static,
    here: impl FnOnce() -> U,
) -> (T, U) {
    let claimed = Arc::new(AtomicBool::new(false));
    let helper = {
        let (claimed, job) = (Arc::clone(&claimed), job.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || (!claimed.swap(true, Ordering::AcqRel)).then(job))
    };
    let done_here = here();
    let done = match helper {
        // A helper that panicked did nothing that lasts: the job is done here instead.
        Ok(h) if claimed.swap(true, Ordering::AcqRel) => h.join().ok().flatten().unwrap_or_else(job),
        _ => job(),
    };
    (done, done_here)
}

/// SmolVM's files: sockets (and which a live process serves), logs, disks, create locks
/// and claim files (and which a live process holds), firmware directories; each listed
/// through the root's held fd.
fn list_files(d: &mut Discovery, cfg: &Config<'_>) {
    let held: Vec<&PathBuf> = cfg
        .data_dirs
        .iter()
        .map(|dd| &dd.dir)
        .filter(|dir| d.roots.get(dir).is_some())
        .collect();
    for dir in held {
        for sub in DATA_SUBDIRS {
            if let Err(why) = d.roots.open_sub(dir, sub) {
                let line = format!("{why}: nothing behind it is removed, and the VMs with files there fail");
                if !d.warnings.contains(&line) {
                    d.warnings.push(line);
                }
            }
        }
    }
    let (roots, procfs) = (&d.roots, &d.procfs);
    let obs = &mut d.obs;
    // SmolVM's sockets, and which of them a live process still serves: one connect each,
    // on a thread while the data dirs are listed.
    obs.socket_names = roots
        .list(&cfg.socket_dir, "")
        .into_iter()
        .filter(|n| socket_id(n).is_some() || libkrun_config_id(n).is_some())
        .collect();
    let names = &obs.socket_names;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let probe = || probe_sockets(roots, &cfg.socket_dir, names, &next);
    let (probed, listings) = std::thread::scope(|s| {
        let job = std::thread::Builder::new()
            .name("probes".into())
            .spawn_scoped(s, probe);
        let listings = list_data_dirs(roots, procfs, cfg);
        // Then this thread probes too, what the other has not taken yet.
        let mut probed = vec![probe()];
        // A panicked prober's sockets are probed again here (probes change nothing).
        if let Ok(job) = job {
            probed.push(
                job.join()
                    .unwrap_or_else(|_| probe_sockets(roots, &cfg.socket_dir, names, &Default::default())),
            );
        }
        (probed, listings)
    });
    for p in probed {
        obs.owners.extend(p.owners);
        obs.served.extend(p.served);
        obs.probes_denied |= p.denied;
    }
    let DataDirs {
        listings,
        held_locks,
        lock_holders,
    } = listings;
    obs.data_listing.extend(listings);
    obs.held_locks.extend(held_locks);
    obs.lock_holders.extend(lock_holders);
}

/// Which of the sockets a live process serves.
#[derive(Default)]
struct Probed {
    served: Vec<PathBuf>,
    /// Whose each served socket is: it decides whose life it shows (`reconcile`).
    owners: Vec<(PathBuf, u32)>,
    /// A socket we may not connect to (another user's).
    denied: bool,
}

/// Probes the sockets among `names` from `next` on, each taken by one prober only.
fn probe_sockets(
    roots: &files::Roots,
    dir: &std::path::Path,
    names: &[String],
    next: &std::sync::atomic::AtomicUsize,
) -> Probed {
    let mut out = Probed::default();
    while let Some(name) = names.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
        if socket_id(name).is_none() {
            continue;
        }
        let path = dir.join(name);
        match files::probe_socket(&path) {
            files::Probe::Served => {
                if let Some(uid) = roots.owner(dir, name) {
                    out.owners.push((path.clone(), uid));
                }
                out.served.push(path);
            }
            files::Probe::Denied => out.denied = true,
            files::Probe::NotServed => {}
        }
    }
    out
}

/// What the data dirs hold, and which of their locks a live process holds.
struct DataDirs {
    listings: Vec<DirListing>,
    held_locks: Vec<PathBuf>,
    lock_holders: Vec<(PathBuf, Vec<u32>)>,
}

fn list_data_dirs(roots: &files::Roots, procfs: &Procfs, cfg: &Config<'_>) -> DataDirs {
    let mut out = DataDirs {
        listings: Vec::new(),
        held_locks: Vec::new(),
        lock_holders: Vec::new(),
    };
    for dd in cfg.data_dirs.iter().filter(|dd| roots.get(&dd.dir).is_some()) {
        let locks: Vec<String> = roots
            .list(&dd.dir, "locks")
            .into_iter()
            .filter(|n| n.ends_with(".create.lock") || n.ends_with(".snapshot.lock"))
            .collect();
        let resource_locks: Vec<String> = roots
            .list(&dd.dir, "locks/resources")
            .into_iter()
            .filter(|n| n.ends_with(".lock"))
            .collect();
        let held = locks.iter().map(|n| dd.dir.join("locks").join(n)).chain(
            resource_locks
                .iter()
                .map(|n| dd.dir.join("locks/resources").join(n)),
        );
        for path in held {
            if files::lock_is_held(&path) {
                out.lock_holders.push((path.clone(), procfs.lock_holders(&path)));
                out.held_locks.push(path);
            }
        }
        out.listings.push(DirListing {
            dir: dd.dir.clone(),
            top: roots
                .list(&dd.dir, "")
                .into_iter()
                .filter(|n| n.ends_with(".log"))
                .collect(),
            disks: roots.list(&dd.dir, "disks"),
            locks,
            resource_locks,
            firmware: roots.list(&dd.dir, "firmware"),
            known_hosts: roots.list(&dd.dir, "ssh-known-hosts"),
            browser_sessions: roots.list(&dd.dir, "browser-sessions"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job runs exactly once and its result comes back, whoever took it.
    #[test]
    fn a_job_beside_other_work_runs_once_on_whichever_thread_comes_first() {
        use std::sync::atomic::AtomicUsize;
        use std::time::Duration;
        let runs = Arc::new(AtomicUsize::new(0));
        let mut on = std::collections::BTreeSet::new();
        for i in 0..200usize {
            let counted = Arc::clone(&runs);
            let job = move || {
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::current().name().map(str::to_string)
            };
            // Sometimes this thread is done before the helper runs, sometimes after.
            let here = || std::thread::sleep(Duration::from_micros(i as u64 % 4 * 500));
            let (by, ()) = beside("helper", job, here);
            assert_eq!(runs.load(Ordering::SeqCst), i + 1, "run {i}: exactly once");
            on.insert(by);
        }
        assert!(
            on.contains(&Some("helper".to_string())),
            "the helper took it at least once: {on:?}"
        );
    }

    /// Two probers sharing one counter find every served socket, once, and only those.
    #[test]
    fn probers_sharing_a_counter_probe_each_socket_once() {
        let dir = std::env::temp_dir().join(format!("probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut names = Vec::new();
        let mut listeners = Vec::new();
        for i in 0..40 {
            let name = format!("fc-vm-{i:08x}.sock");
            let l = std::os::unix::net::UnixListener::bind(dir.join(&name)).unwrap();
            // Every third one stays served; the others' owners are gone.
            if i % 3 == 0 {
                listeners.push(l);
            }
            names.push(name);
        }
        names.push("not-a-socket-name.txt".into());
        let roots = files::Roots::default();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (a, b) = std::thread::scope(|s| {
            let other = s.spawn(|| probe_sockets(&roots, &dir, &names, &next));
            let mine = probe_sockets(&roots, &dir, &names, &next);
            (mine, other.join().unwrap())
        });
        let mut served: Vec<PathBuf> = a.served.into_iter().chain(b.served).collect();
        served.sort();
        let want: Vec<PathBuf> = (0..40)
            .filter(|i| i % 3 == 0)
            .map(|i| dir.join(format!("fc-vm-{i:08x}.sock")))
            .collect();
        assert_eq!(served, want);
        assert!(!a.denied && !b.denied);
        drop(listeners);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
