//! Where SmolVM and Celesto keep their state: the data directories to look at, in their
//! own order, and the DB files in each. Looking never creates a directory (their
//! resolvers do; a cleanup tool must not).
//!
//! A data dir is a directory; it may hold either project's DB or both (Celesto writes
//! `celesto.db` into a user's legacy `~/.local/state/smolvm` while no
//! `~/.local/state/celesto` exists, and `SMOLVM_DATA_DIR` alone points both at one dir).

use std::path::{Path, PathBuf};

use crate::model::Project;

/// The environment facts the resolution depends on, gathered once so the rules stay pure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    pub euid: u32,
    pub sudo_user: Option<String>,
    /// Home of `sudo_user` from the passwd database, when it resolves.
    pub sudo_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub xdg_state_home: Option<PathBuf>,
    /// `SMOLVM_DATA_DIR`, `CELESTO_DATA_DIR`: the data dirs named by the projects' own
    /// variables (Celesto copies the first into the second when that is unset).
    pub named: Vec<(Project, PathBuf)>,
    /// `SMOLVM_DATABASE_URL` (0.0.8-0.0.29: state in PostgreSQL when it names one).
    pub database_url: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let sudo_user = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty());
        let sudo_home = sudo_user.as_deref().and_then(|u| {
            let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
            passwd_home(&passwd, u)
        });
        Env {
            euid: rustix::process::geteuid().as_raw(),
            sudo_user,
            sudo_home,
            home: var("HOME"),
            xdg_state_home: var("XDG_STATE_HOME"),
            named: Project::ALL
                .into_iter()
                .filter_map(|p| Some((p, var(p.names().data_dir_var)?)))
                .collect(),
            database_url: std::env::var("SMOLVM_DATABASE_URL")
                .ok()
                .filter(|u| !u.is_empty()),
        }
    }

    /// The data dirs the projects' variables name, each once.
    pub fn named_dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (_, dir) in &self.named {
            if !out.contains(dir) {
                out.push(dir.clone());
            }
        }
        out
    }
}

/// The name of the user this process runs as (libpq's default user), from /etc/passwd.
pub fn os_user() -> Option<String> {
    let uid = rustix::process::geteuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_entry(&passwd, |f| f[2].parse() == Ok(uid)).map(|f| f[0].to_string())
}

/// The home libpq looks in (`~/.pgpass`, `~/.postgresql/`): `$HOME`, else /etc/passwd's.
pub fn home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    let uid = rustix::process::geteuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_entry(&passwd, |f| f[2].parse() == Ok(uid))
        .map(|f| PathBuf::from(f[5]))
        .filter(|h| !h.as_os_str().is_empty())
}

/// The fields of the first /etc/passwd line `pick` accepts.
fn passwd_entry(passwd: &str, pick: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<&str>>())
        .find(|f| f.len() >= 7 && pick(f))
}

/// Home directory of `user` in an /etc/passwd text (musl's getpwnam would read the same file).
pub fn passwd_home(passwd: &str, user: &str) -> Option<PathBuf> {
    passwd_entry(passwd, |f| f[0] == user)
        .map(|f| PathBuf::from(f[5]))
        .filter(|h| !h.as_os_str().is_empty())
}

/// The candidate data directories of both projects, most preferred first: each
/// project's `_candidate_data_dirs` (user state dir and `/var/lib/<key>`, root without
/// sudo preferring the latter), SmolVM's then Celesto's at each rank, and SmolVM's
/// legacy `~/.smolvm/state` (0.0.1–0.0.6). Celesto's legacy rule (its user state dir is
/// `<state>/smolvm` while `<state>/celesto` does not exist) needs no entry: both are here.
pub fn candidates(env: &Env) -> Vec<PathBuf> {
    let named = env.named_dirs();
    if !named.is_empty() {
        return named;
    }
    let var_lib: Vec<PathBuf> = Project::ALL
        .iter()
        .map(|p| Path::new("/var/lib").join(p.names().key))
        .collect();
    let user_dirs = |home: &Path, xdg: Option<&Path>| {
        let state = match xdg {
            Some(x) => x.to_path_buf(),
            None => home.join(".local/state"),
        };
        let mut v: Vec<PathBuf> = Project::ALL.iter().map(|p| state.join(p.names().key)).collect();
        v.push(home.join(".smolvm/state"));
        v
    };
    let mut out = Vec::new();
    match (env.euid, env.sudo_user.as_deref(), env.sudo_home.as_deref()) {
        (0, Some(user), Some(home)) if user != "root" => {
            // XDG_STATE_HOME is the invoking shell's, not the sudo user's: SmolVM ignores it.
            out.extend(user_dirs(home, None));
            out.extend(var_lib);
        }
        (0, _, _) => {
            out.extend(var_lib);
            if let Some(home) = &env.home {
                out.extend(user_dirs(home, env.xdg_state_home.as_deref()));
            }
        }
        _ => {
            if let Some(home) = &env.home {
                out.extend(user_dirs(home, env.xdg_state_home.as_deref()));
            }
            out.extend(var_lib);
        }
    }
    out
}

/// The PostgreSQL URL SmolVM's state is in, when it is (SmolVM's own test: a URL that
/// starts with `postgresql` or `postgres://`), as it may be shown: every secret libpq
/// reads from it hidden (`PGPASSWORD` and `.pgpass` are never shown).
pub fn postgres(url: &str) -> Option<String> {
    (url.starts_with("postgresql") || url.starts_with("postgres://")).then(|| crate::pg::redact(url))
}

/// The data dir SmolVM keeps its VMs' files in while its rows are in PostgreSQL: the one
/// the run was pointed at, `SMOLVM_DATA_DIR`, or SmolVM's own first candidate that exists
/// (its order: the user's state dir first, `/var/lib/smolvm` first for plain root).
pub fn smolvm_data_dir(db: Option<&Path>, state_dir: Option<&Path>, env: &Env) -> Option<PathBuf> {
    if let Some(dir) = state_dir {
        return Some(dir.to_path_buf());
    }
    if let Some(db) = db {
        return db.parent().map(Path::to_path_buf);
    }
    if let Some((_, dir)) = env.named.iter().find(|(p, _)| *p == Project::SmolVM) {
        return Some(dir.clone());
    }
    let key = Project::SmolVM.names().key;
    let ours: Vec<PathBuf> = candidates(env)
        .into_iter()
        .filter(|d| d.file_name().and_then(|n| n.to_str()) == Some(key))
        .collect();
    ours.iter().find(|d| d.is_dir()).or(ours.first()).cloned()
}

/// Where the projects keep port-forward state (`~/.smolvm/forwards`, `~/.celesto/forwards`,
/// 0.0.19+): in the home of the user SmolVM ran as, the invoking user's under sudo, and
/// the home cleanup runs with.
pub fn forwards_dirs(env: &Env) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for home in [env.sudo_home.as_ref(), env.home.as_ref()].into_iter().flatten() {
        for p in Project::ALL {
            let dir = home.join(format!(".{}", p.names().key)).join("forwards");
            if !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    out
}

/// The DB files a data dir may hold, one per project.
fn db_files(dir: &Path) -> Vec<(Project, PathBuf)> {
    Project::ALL
        .into_iter()
        .map(|p| (p, dir.join(p.names().db_file)))
        .collect()
}

fn holds_a_db(dir: &Path) -> bool {
    db_files(dir).iter().any(|(_, f)| f.is_file())
}

/// When the run is limited to data dirs named explicitly: the other data dirs on the host
/// that hold a DB of either project (their candidates). Their rows are read, never
/// written, so that a VM another data dir owns (a parallel CI job's) is never taken for
/// a leftover.
pub fn others(env: &Env, chosen: &[DataDir]) -> Vec<DataDir> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let taken: Vec<PathBuf> = chosen.iter().map(|d| canon(&d.dir)).collect();
    let env = Env {
        named: Vec::new(),
        ..env.clone()
    };
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    for dir in candidates(&env) {
        let key = canon(&dir);
        if holds_a_db(&dir) && !taken.contains(&key) && !seen.contains(&key) {
            seen.push(key);
            out.push(DataDir::of(dir, false));
        }
    }
    out
}

/// A data directory and the DB files it may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct DataDir {
    pub dir: PathBuf,
    /// The DB files looked for, with whose each is (those that do not exist are skipped).
    pub dbs: Vec<(Project, PathBuf)>,
    /// Named by `--db`, `--state-dir`, `SMOLVM_DATA_DIR` or `CELESTO_DATA_DIR`: the run is
    /// limited to it, and it must exist (a typo is an error). Holding no DB, it is
    /// reconciled from the live system as the projects' own data dirs are.
    pub explicit: bool,
    /// Named by `--db`: a file named explicitly must be a state DB.
    pub db_named: bool,
}

impl DataDir {
    pub fn of(dir: PathBuf, explicit: bool) -> DataDir {
        DataDir {
            dbs: db_files(&dir),
            dir,
            explicit,
            db_named: false,
        }
    }

    /// Why this explicitly named place cannot be cleaned, when it cannot: the directory
    /// does not exist, or the file `--db` names does not. (A file that is not SQLite is
    /// found by discovery.)
    pub fn unusable(&self) -> Option<String> {
        if !self.explicit {
            return None;
        }
        if !self.dir.is_dir() {
            return Some(format!("data dir {} does not exist", self.dir.display()));
        }
        let (_, db) = self.dbs.first().filter(|_| self.db_named)?;
        (!db.is_file()).then(|| format!("no state DB at {} (named by --db)", db.display()))
    }
}

/// Which data directories this run uses. An explicit choice (`--db`, `--state-dir`, the
/// projects' variables) is used alone, even when it holds no DB (lost, or removed by the
/// recovery recipe). Otherwise every candidate that holds a DB of either project is used
/// (a sudo user's and root's, SmolVM's and Celesto's can all exist); with none, the
/// existing candidates still matter for leftover files.
pub fn resolve(db: Option<&Path>, state_dir: Option<&Path>, env: &Env) -> Vec<DataDir> {
    if let Some(db) = db {
        let dir = db
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let name = db.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        return vec![DataDir {
            dir,
            dbs: vec![(Project::of_db_file(name), db.to_path_buf())],
            explicit: true,
            db_named: true,
        }];
    }
    if let Some(dir) = state_dir {
        return vec![DataDir::of(dir.to_path_buf(), true)];
    }
    let named = env.named_dirs();
    if !named.is_empty() {
        return named.into_iter().map(|d| DataDir::of(d, true)).collect();
    }
    let mut seen = Vec::new();
    let mut with_db = Vec::new();
    let mut existing = Vec::new();
    for dir in candidates(env) {
        let key = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        if holds_a_db(&dir) {
            with_db.push(DataDir::of(dir, false));
        } else if dir.is_dir() {
            existing.push(DataDir::of(dir, false));
        }
    }
    if with_db.is_empty() { existing } else { with_db }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(euid: u32) -> Env {
        Env {
            euid,
            home: Some("/home/ci".into()),
            ..Env::default()
        }
    }

    fn strs(v: Vec<PathBuf>) -> Vec<String> {
        v.into_iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn plain_root_prefers_var_lib() {
        assert_eq!(
            strs(candidates(&env(0))),
            [
                "/var/lib/smolvm",
                "/var/lib/celesto",
                "/home/ci/.local/state/smolvm",
                "/home/ci/.local/state/celesto",
                "/home/ci/.smolvm/state"
            ]
        );
    }

    #[test]
    fn user_prefers_xdg() {
        let mut e = env(1000);
        e.xdg_state_home = Some("/x/state".into());
        assert_eq!(
            strs(candidates(&e)),
            [
                "/x/state/smolvm",
                "/x/state/celesto",
                "/home/ci/.smolvm/state",
                "/var/lib/smolvm",
                "/var/lib/celesto"
            ]
        );
    }

    #[test]
    fn sudo_uses_invoking_users_home_and_ignores_xdg() {
        let mut e = env(0);
        e.sudo_user = Some("alice".into());
        e.sudo_home = Some("/home/alice".into());
        e.xdg_state_home = Some("/root/state".into());
        assert_eq!(
            strs(candidates(&e)),
            [
                "/home/alice/.local/state/smolvm",
                "/home/alice/.local/state/celesto",
                "/home/alice/.smolvm/state",
                "/var/lib/smolvm",
                "/var/lib/celesto"
            ]
        );
        e.sudo_user = Some("root".into());
        assert_eq!(candidates(&e)[0], PathBuf::from("/var/lib/smolvm"));
    }

    #[test]
    fn the_projects_variables_win_and_a_dir_holds_either_db() {
        let mut e = env(0);
        e.named = vec![(Project::SmolVM, "/data".into())];
        assert_eq!(strs(candidates(&e)), ["/data"]);
        let r = resolve(None, None, &e);
        assert_eq!(
            r,
            vec![DataDir {
                dir: "/data".into(),
                dbs: vec![
                    (Project::SmolVM, "/data/smolvm.db".into()),
                    (Project::Celesto, "/data/celesto.db".into())
                ],
                explicit: true,
                db_named: false,
            }]
        );
        e.named.push((Project::Celesto, "/data".into()));
        assert_eq!(resolve(None, None, &e).len(), 1, "one dir named twice is one dir");
        e.named[1].1 = "/cdata".into();
        assert_eq!(strs(candidates(&e)), ["/data", "/cdata"]);
        let r = resolve(None, Some(Path::new("/mine")), &e);
        assert_eq!(r[0].dir, PathBuf::from("/mine"));
        let r = resolve(Some(Path::new("/x/celesto.db")), None, &e);
        assert_eq!(r[0].dbs, [(Project::Celesto, PathBuf::from("/x/celesto.db"))]);
        let r = resolve(Some(Path::new("state.db")), None, &e);
        assert_eq!(
            (r[0].dir.as_path(), r[0].dbs[0].0),
            (Path::new("."), Project::SmolVM)
        );
    }

    #[test]
    fn forwards_live_in_the_homes() {
        let mut e = env(0);
        e.sudo_home = Some("/home/alice".into());
        assert_eq!(
            strs(forwards_dirs(&e)),
            [
                "/home/alice/.smolvm/forwards",
                "/home/alice/.celesto/forwards",
                "/home/ci/.smolvm/forwards",
                "/home/ci/.celesto/forwards"
            ]
        );
    }

    #[test]
    fn postgres_urls_are_told_and_their_passwords_hidden() {
        assert_eq!(
            postgres("postgresql://ci:s3cret@db:5432/smolvm").as_deref(),
            Some("postgresql://ci:***@db:5432/smolvm")
        );
        assert_eq!(
            postgres("postgres://db/smolvm").as_deref(),
            Some("postgres://db/smolvm")
        );
        assert_eq!(postgres("sqlite:///x.db"), None);
        // `pg::redact` hides the rest (its own tests).
        assert_eq!(
            postgres("postgresql://u@h/db?password=s3cret").as_deref(),
            Some("postgresql://u@h/db?password=***")
        );
    }

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(passwd_home(p, "alice"), Some(PathBuf::from("/home/alice")));
        assert_eq!(passwd_home(p, "bob"), None);
    }
}
