//! The house's rules, checked on the source itself: the pure stages (`model`, `reconcile`,
//! `plan`) import nothing that touches the kernel, the DB or the files; `model` imports
//! nothing from the crate; every module opens with a doc comment saying what it owns; and
//! a file past ~500 lines says why at its top.

use std::path::{Path, PathBuf};

/// The modules that read or change the system: a pure stage must not reach them.
const KERNEL_OR_DB: [&str; 13] = [
    "state", "netlink", "procfs", "files", "process", "lock", "discover", "apply", "signals", "locate",
    "diag", "report", "cli",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate paths a file names (`crate::state::Db` → `state`), outside comments.
fn crate_modules(text: &str) -> Vec<String> {
    let mut mods = Vec::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                mods.push(name);
            }
        }
    }
    mods
}

#[test]
fn pure_stages_import_no_kernel_db_or_file_code() {
    let mut files = Vec::new();
    rust_files(&src().join("model"), &mut files);
    rust_files(&src().join("reconcile"), &mut files);
    files.push(src().join("plan.rs"));
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let in_model = f.starts_with(src().join("model"));
        for m in crate_modules(&text) {
            let allowed = if in_model {
                false
            } else {
                !KERNEL_OR_DB.contains(&m.as_str())
            };
            if !allowed {
                bad.push(format!(
                    "{}: crate::{m}",
                    f.strip_prefix(src()).unwrap().display()
                ));
            }
        }
        // A top-level pure file reaching the crate root by `super::` would escape the rule.
        if f.parent() == Some(src().as_path()) && text.contains("use super::") && !text.contains("mod tests")
        {
            bad.push(format!("{}: use super::", f.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "pure stages import kernel, DB or file code:\n{}",
        bad.join("\n")
    );
}

#[test]
fn every_module_says_what_it_owns_and_a_long_one_why() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let shown = f.strip_prefix(src()).unwrap().display().to_string();
        let doc: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
        if doc.is_empty() {
            bad.push(format!("{shown}: no opening doc comment"));
        }
        let lines = text.lines().count();
        if lines > 550
            && !doc
                .iter()
                .any(|l| l.contains("Longer than") || l.contains("half of this file"))
        {
            bad.push(format!("{shown}: {lines} lines and no reason at its top"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
