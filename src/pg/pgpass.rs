//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`) as libpq reads it: lines of
//! `host:port:database:user:password`, `*` matching anything, `\` escaping `:` and `\`,
//! the first match winning; a file that is not a plain file, or that its group or others
//! may read, is ignored with a warning.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::conninfo::Secret;

/// What the file gives for this login: a password, nothing, or why it was ignored.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Secret),
    None,
    Ignored(String),
}

/// The password for `host:port:db:user`, from `file`.
pub fn lookup(file: &Path, host: &str, port: u16, db: &str, user: &str) -> Lookup {
    if file.as_os_str().is_empty() {
        return Lookup::None;
    }
    let Ok(meta) = std::fs::metadata(file) else {
        return Lookup::None;
    };
    if !meta.is_file() {
        return Lookup::Ignored(format!("password file {} is not a plain file", file.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Lookup::Ignored(format!(
            "password file {} has group or world access (mode {:o}, uid {}); permissions should be u=rw (0600) or less",
            file.display(),
            meta.permissions().mode() & 0o7777,
            meta.uid()
        ));
    }
    match std::fs::read_to_string(file) {
        Ok(text) => find(&text, host, &port.to_string(), db, user).map_or(Lookup::None, Lookup::Found),
        Err(_) => Lookup::None,
    }
}

/// The first line that matches, de-escaped (pure).
pub fn find(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<Secret> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut ok = true;
        for want in [host, port, db, user] {
            match field_matches(rest, want) {
                Some(r) => rest = r,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            let mut pw = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    ':' => break,
                    '\\' => match chars.next() {
                        Some(n) => pw.push(n),
                        None => pw.push('\\'),
                    },
                    c => pw.push(c),
                }
            }
            return Some(Secret(pw));
        }
    }
    None
}

/// libpq's `pwdfMatchesString`: `*:` or the value (with `\` escapes) then `:`; returns
/// what follows.
fn field_matches<'a>(field: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = field.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = want.chars();
    let mut chars = field.char_indices();
    while let Some((i, c)) = chars.next() {
        let c = match c {
            ':' => return want.next().is_none().then(|| &field[i + 1..]),
            '\\' => chars.next()?.1,
            c => c,
        };
        if want.next() != Some(c) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
db.example:5432:smolvm:ci:first
*:*:other:*:wild
localhost:5432:*:ci:s0cket\\:pw\\\\x
/tmp/pg:5999:*:*:custom-dir
";

    fn pw(host: &str, port: &str, db: &str, user: &str) -> Option<String> {
        find(FILE, host, port, db, user).map(|s| s.0)
    }

    #[test]
    fn first_match_wins_with_wildcards_and_escapes() {
        assert_eq!(pw("db.example", "5432", "smolvm", "ci").as_deref(), Some("first"));
        assert_eq!(pw("anything", "1", "other", "x").as_deref(), Some("wild"));
        assert_eq!(
            pw("localhost", "5432", "smolvm", "ci").as_deref(),
            Some("s0cket:pw\\x")
        );
        assert_eq!(pw("/tmp/pg", "5999", "db", "u").as_deref(), Some("custom-dir"));
        assert_eq!(pw("db.example", "5433", "smolvm", "ci"), None);
        assert_eq!(pw("db.example", "5432", "smolvm", "cix"), None);
    }

    #[test]
    fn a_file_others_may_read_is_ignored() {
        let p = std::env::temp_dir().join(format!("pgpass-test-{}", std::process::id()));
        std::fs::write(&p, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            matches!(lookup(&p, "h", 5432, "d", "u"), Lookup::Ignored(w) if w.contains("group or world access"))
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(&p, "h", 5432, "d", "u"),
            Lookup::Found(Secret("pw".into()))
        );
        std::fs::remove_file(&p).unwrap();
        assert_eq!(lookup(&p, "h", 5432, "d", "u"), Lookup::None);
    }
}
