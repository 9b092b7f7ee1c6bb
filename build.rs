//! Build facts only: the git commit `--version` prints. `SMOLVM_CLEANUP_COMMIT` overrides
//! it (for builds from a tarball or a Docker context without `.git`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SMOLVM_CLEANUP_COMMIT");
    let commit = std::env::var("SMOLVM_CLEANUP_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SMOLVM_CLEANUP_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    let git_dir = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()?;
    if git_dir.status.success() {
        let dir = String::from_utf8_lossy(&git_dir.stdout).trim().to_string();
        // Rebuild when HEAD moves (a commit, a checkout).
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if !out.status.success() || sha.is_empty() {
        return None;
    }
    Some(sha)
}
