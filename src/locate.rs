//! Where SmolVM keeps its state: the data directories to look at, in SmolVM's own order.
//! Looking never creates a directory (SmolVM's resolver does; a cleanup tool must not).

use std::path::{Path, PathBuf};

/// The environment facts the resolution depends on, gathered once so the rules stay pure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    pub euid: u32,
    pub sudo_user: Option<String>,
    /// Home of `sudo_user` from the passwd database, when it resolves.
    pub sudo_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub xdg_state_home: Option<PathBuf>,
    pub smolvm_data_dir: Option<PathBuf>,
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
            smolvm_data_dir: var("SMOLVM_DATA_DIR"),
        }
    }
}

/// Home directory of `user` in an /etc/passwd text (musl's getpwnam would read the same file).
pub fn passwd_home(passwd: &str, user: &str) -> Option<PathBuf> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[0] == user && !f[5].is_empty()).then(|| PathBuf::from(f[5]))
    })
}

/// SmolVM's candidate data directories, most preferred first (its `_candidate_data_dirs`,
/// legacy `~/.smolvm/state` included because old releases wrote there).
pub fn candidates(env: &Env) -> Vec<PathBuf> {
    if let Some(dir) = &env.smolvm_data_dir {
        return vec![dir.clone()];
    }
    let var_lib = PathBuf::from("/var/lib/smolvm");
    let user_dirs = |home: &Path, xdg: Option<&Path>| {
        let state = match xdg {
            Some(x) => x.join("smolvm"),
            None => home.join(".local/state/smolvm"),
        };
        [state, home.join(".smolvm/state")]
    };
    let mut out = Vec::new();
    match (env.euid, env.sudo_user.as_deref(), env.sudo_home.as_deref()) {
        (0, Some(user), Some(home)) if user != "root" => {
            // XDG_STATE_HOME is the invoking shell's, not the sudo user's: SmolVM ignores it.
            out.extend(user_dirs(home, None));
            out.push(var_lib);
        }
        (0, _, _) => {
            out.push(var_lib);
            if let Some(home) = &env.home {
                out.extend(user_dirs(home, env.xdg_state_home.as_deref()));
            }
        }
        _ => {
            if let Some(home) = &env.home {
                out.extend(user_dirs(home, env.xdg_state_home.as_deref()));
            }
            out.push(var_lib);
        }
    }
    out
}

/// When the run is limited to data dirs named explicitly: the other SmolVM data dirs on
/// the host that hold a DB (SmolVM's candidates). Their rows are read, never written, so
/// that a VM another data dir owns (a parallel CI job's) is never taken for a leftover.
pub fn others(env: &Env, chosen: &[DataDir]) -> Vec<PathBuf> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let taken: Vec<PathBuf> = chosen.iter().map(|d| canon(&d.dir)).collect();
    let env = Env {
        smolvm_data_dir: None,
        ..env.clone()
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in candidates(&env) {
        let key = canon(&dir);
        if dir.join("smolvm.db").is_file() && !taken.contains(&key) && !out.iter().any(|o| canon(o) == key) {
            out.push(dir);
        }
    }
    out
}

/// A data directory and its DB file, if it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct DataDir {
    pub dir: PathBuf,
    pub db: Option<PathBuf>,
    /// Named by `--db`, `--state-dir` or `SMOLVM_DATA_DIR`: the run is limited to it, and
    /// it must exist (a typo is an error). Holding no DB, it is reconciled from the live
    /// system as SmolVM's own data dir is.
    pub explicit: bool,
    /// Named by `--db`: a file named explicitly must be SmolVM's DB.
    pub db_named: bool,
}

impl DataDir {
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
        let db = self.db.as_deref().filter(|_| self.db_named)?;
        (!db.is_file()).then(|| format!("no state DB at {} (named by --db)", db.display()))
    }
}

/// Which data directories this run uses. An explicit choice (`--db`, `--state-dir`,
/// `SMOLVM_DATA_DIR`) is used alone, even when it holds no DB (lost, or removed by the
/// recovery recipe). Otherwise every
/// candidate that holds a `smolvm.db` is used (a sudo user's and root's can both exist);
/// with none, the existing candidates still matter for leftover files.
pub fn resolve(db: Option<&Path>, state_dir: Option<&Path>, env: &Env) -> Vec<DataDir> {
    if let Some(db) = db {
        let dir = db
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        return vec![DataDir {
            dir,
            db: Some(db.to_path_buf()),
            explicit: true,
            db_named: true,
        }];
    }
    let explicit = state_dir
        .map(Path::to_path_buf)
        .or_else(|| env.smolvm_data_dir.clone());
    if let Some(dir) = explicit {
        let db = dir.join("smolvm.db");
        return vec![DataDir {
            dir,
            db: Some(db),
            explicit: true,
            db_named: false,
        }];
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
        let db = dir.join("smolvm.db");
        if db.is_file() {
            with_db.push(DataDir {
                dir,
                db: Some(db),
                explicit: false,
                db_named: false,
            });
        } else if dir.is_dir() {
            existing.push(DataDir {
                dir,
                db: None,
                explicit: false,
                db_named: false,
            });
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
                "/home/ci/.local/state/smolvm",
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
            ["/x/state/smolvm", "/home/ci/.smolvm/state", "/var/lib/smolvm"]
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
                "/home/alice/.smolvm/state",
                "/var/lib/smolvm"
            ]
        );
        e.sudo_user = Some("root".into());
        assert_eq!(candidates(&e)[0], PathBuf::from("/var/lib/smolvm"));
    }

    #[test]
    fn env_override_wins() {
        let mut e = env(0);
        e.smolvm_data_dir = Some("/data".into());
        assert_eq!(strs(candidates(&e)), ["/data"]);
        let r = resolve(None, None, &e);
        assert_eq!(
            r,
            vec![DataDir {
                dir: "/data".into(),
                db: Some("/data/smolvm.db".into()),
                explicit: true,
                db_named: false,
            }]
        );
        let r = resolve(None, Some(Path::new("/mine")), &e);
        assert_eq!(r[0].dir, PathBuf::from("/mine"));
    }

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(passwd_home(p, "alice"), Some(PathBuf::from("/home/alice")));
        assert_eq!(passwd_home(p, "bob"), None);
    }
}
