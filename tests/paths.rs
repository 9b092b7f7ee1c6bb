//! Paths as users lay them out: a named data dir whose DB was removed (the recovery
//! recipe), a corrupt DB, `disks/` and data dirs behind symlinks (followed only when
//! that cannot hand a removal to someone else), and no file left where no SmolVM state is.

use std::path::{Path, PathBuf};

use crate::orphans::{ALL_FOUR, assert_host_clean};
use crate::util::{Run, Scratch, World, bin, comments, has_link, probe_world, sh};

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let out = sh(&format!("cd {} && find . | sort", dir.display()));
    out.lines().map(str::to_string).collect()
}

/// The binary with the data dir named only by SmolVM's own variable, as a CI job does.
fn run_env(w: &World, args: &[&str]) -> Run {
    Run::from(
        bin()
            .env("SMOLVM_DATA_DIR", &w.data)
            .env("HOME", &w.scratch.0)
            .arg("--socket-dir")
            .arg(&w.sock)
            .args(args)
            .output()
            .unwrap(),
    )
}

/// The contract's recipe (back the DB up, remove it, run cleanup) with the data dir named
/// by `SMOLVM_DATA_DIR`: the live system is reconciled, and stderr says so once.
#[test]
fn the_recipe_with_smolvm_data_dir_reclaims_everything() {
    let Some(w) = probe_world("recipe-env", false) else {
        return;
    };
    std::fs::rename(&w.db, w.scratch.0.join("smolvm.db.bak")).unwrap();
    let r = run_env(&w, &[]);
    r.expect(0, ALL_FOUR);
    let line = format!(
        "smolvm-cleanup: no state DB found (in {}); reconciling from the live system\n",
        w.data.display()
    );
    assert_eq!(r.stderr.matches(&line).count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("refus"), "{}", r.stderr);
    assert_host_clean(&w);
    assert!(!w.db.exists(), "no DB is created");
    assert_eq!(tree(&w.data), [".", "./disks"], "nothing left, no lock file");
}

/// The same recipe with `--state-dir`.
#[test]
fn the_recipe_with_state_dir_reclaims_everything() {
    let Some(w) = probe_world("recipe-dir", false) else {
        return;
    };
    std::fs::rename(&w.db, w.scratch.0.join("smolvm.db.bak")).unwrap();
    let r = w.run(&[]);
    r.expect(0, ALL_FOUR);
    assert!(
        r.stderr.contains("reconciling from the live system"),
        "{}",
        r.stderr
    );
    assert_host_clean(&w);
    assert!(!w.db.exists());
}

/// Named, a data dir that does not exist is an error; so is `--db` at a file that is not
/// SQLite (a file named explicitly is no lost DB to recover from). Nothing is touched.
#[test]
fn a_named_dir_that_does_not_exist_or_a_db_that_is_not_sqlite_is_an_error() {
    let Some(w) = probe_world("named-bad", false) else {
        return;
    };
    let before_rules = comments();
    let typo = Run::from(
        bin()
            .env("SMOLVM_DATA_DIR", w.scratch.0.join("no-such-dir"))
            .arg("--socket-dir")
            .arg(&w.sock)
            .output()
            .unwrap(),
    );
    assert_eq!((typo.code, typo.stdout.as_str()), (1, ""), "{}", typo.stderr);
    assert!(
        typo.stderr.contains("no-such-dir does not exist"),
        "{}",
        typo.stderr
    );
    let garbage = w.scratch.0.join("not-a-db");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let r = Run::from(
        bin()
            .arg("--db")
            .arg(&garbage)
            .arg("--socket-dir")
            .arg(&w.sock)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("Cleanup incomplete: cannot open state DB")
            && r.stdout.contains("not a SQLite database (bad header)"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stderr.contains("mv "),
        "no recipe for a file named by --db: {}",
        r.stderr
    );
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![7u8; 4096]);
    assert_eq!(comments(), before_rules);
    assert!(has_link("tap3") && has_link("tap5"));
}

/// A corrupt DB: left byte-identical, nothing taken (the rows it would keep are
/// unknown), exit 1, and one line on stderr with the recipe; following it reclaims all.
fn corrupt_db_then_recipe(tag: &str, damage: impl FnOnce(&[u8]) -> Vec<u8>, why: &str) {
    let Some(mut w) = probe_world(tag, false) else {
        return;
    };
    let bad = damage(&std::fs::read(&w.db).unwrap());
    std::fs::write(&w.db, &bad).unwrap();
    let before = w.snapshot();
    let r = w.run_found(&[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with(&format!(
            "Cleanup incomplete: cannot open state DB {}",
            w.db.display()
        )) || r.stdout.starts_with(&format!(
            "Cleanup incomplete: cannot read state DB {}",
            w.db.display()
        )),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(why), "{}", r.stdout);
    let recipe = format!(
        "back it up, remove it and run cleanup again (mv {0} {0}.bak)",
        w.db.display()
    );
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains(&recipe)).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains(why),
        "the recipe line names the DB and why: {}",
        lines[0]
    );
    w.snapshot().assert_same(&before);
    std::fs::rename(&w.db, w.data.with_file_name("smolvm.db.bak")).unwrap();
    w.run_found(&[]).expect(0, ALL_FOUR);
    assert_host_clean(&w);
    assert_eq!(
        std::fs::read(w.data.with_file_name("smolvm.db.bak")).unwrap(),
        bad
    );
}

#[test]
fn a_db_that_is_not_sqlite_gives_the_recipe_and_the_recipe_reclaims_the_host() {
    let garbage = |_: &[u8]| (0..9000u32).map(|i| (i * 7 + 3).to_le_bytes()[0]).collect();
    corrupt_db_then_recipe("garbage", garbage, "not a SQLite database (bad header)");
}

#[test]
fn a_truncated_db_gives_the_recipe_and_the_recipe_reclaims_the_host() {
    corrupt_db_then_recipe("truncated", |db| db[..db.len() / 2].to_vec(), "malformed");
}

/// The data dir's `disks/` moved to `<scratch>/volume` and a symlink left in its place
/// (made by root): the volume, and the link.
fn disks_on_a_volume(w: &World) -> (PathBuf, PathBuf) {
    let volume = w.scratch.0.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::rename(w.data.join("disks"), volume.join("disks")).unwrap();
    let link = w.data.join("disks");
    std::os::unix::fs::symlink(volume.join("disks"), &link).unwrap();
    (volume, link)
}

/// `disks/` on a bigger volume, linked by root: the disks behind it go with their VMs.
#[test]
fn the_disks_behind_a_root_owned_disks_symlink_are_removed() {
    let Some(w) = probe_world("disks-root", false) else {
        return;
    };
    let (volume, _) = disks_on_a_volume(&w);
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n\
         Targets (3):\n  - vm-bbbb0002\n  - vm-cccc0003\n  - vm-dddd0004\n\
         Deleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: vm-dddd0004\nCleanup complete.\n",
    );
    assert_eq!(tree(&volume), [".", "./disks", "./disks/keepme.ext4"]);
    assert!(w.data.join("disks").is_symlink(), "the link itself stays");
    w.run(&["--check"]).expect(0, "No leaked SmolVM resources.\n");
}

/// A `disks/` symlink another user made in root's data dir is not followed: each VM with
/// a disk behind it fails with the reason, keeps its row, and `--check` says the same.
#[test]
fn a_disks_symlink_owned_by_another_user_is_refused_and_its_vms_fail() {
    let Some(w) = probe_world("disks-user", false) else {
        return;
    };
    let (volume, link) = disks_on_a_volume(&w);
    sh(&format!("chown -h 1000 {}", link.display()));
    let why = format!("{} is a symlink owned by uid 1000; not followed", link.display());
    let r = w.run(&[]);
    r.expect(
        1,
        &format!(
            "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n\
             Targets (3):\n  - vm-bbbb0002\n  - vm-cccc0003\n  - vm-dddd0004\n\
             Failed:  vm-bbbb0002 ({why})\nFailed:  vm-cccc0003 ({why})\nFailed:  vm-dddd0004 ({why})\n\
             Cleanup completed with 3 failure(s).\n"
        ),
    );
    assert!(r.stderr.contains(&why), "{}", r.stderr);
    assert_eq!(
        tree(&volume),
        [
            ".",
            "./disks",
            "./disks/keepme.ext4",
            "./disks/vm-bbbb0002.ext4",
            "./disks/vm-cccc0003.ext4",
            "./disks/vm-dddd0004.ext4"
        ]
    );
    assert_eq!(w.ids(), ["keepme", "vm-bbbb0002", "vm-cccc0003", "vm-dddd0004"]);
    let check = w.run(&["--check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check.stdout.starts_with("Leaked SmolVM resources (3):\n"),
        "{}",
        check.stdout
    );
    assert!(check.stderr.contains(&why), "{}", check.stderr);
}

/// `/var/lib/smolvm -> /data/smolvm`, made by the admin: the data dir is where it leads.
#[test]
fn a_root_owned_data_dir_symlink_is_followed() {
    let Some(w) = probe_world("datadir-root", false) else {
        return;
    };
    let real = w.scratch.0.join("real-data");
    std::fs::rename(&w.data, &real).unwrap();
    std::os::unix::fs::symlink(&real, &w.data).unwrap();
    let r = w.run_found(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n\
         Targets (3):\n  - vm-bbbb0002\n  - vm-cccc0003\n  - vm-dddd0004\n\
         Deleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: vm-dddd0004\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains(&format!("state DB: {}", w.db.display())),
        "{}",
        r.stderr
    );
    assert_eq!(w.ids(), ["keepme"]);
    assert_eq!(
        tree(&real),
        [
            ".",
            "./disks",
            "./disks/keepme.ext4",
            "./keepme.log",
            "./smolvm.db"
        ]
    );
}

/// A data dir that is a user's symlink in root's directory, in a root run: refused,
/// nothing read or touched, and the run says why.
#[test]
fn a_user_owned_data_dir_symlink_is_refused_in_a_root_run() {
    let Some(mut w) = probe_world("datadir-user", false) else {
        return;
    };
    let real = w.scratch.0.join("real-data");
    std::fs::rename(&w.data, &real).unwrap();
    std::os::unix::fs::symlink(&real, &w.data).unwrap();
    sh(&format!("chown -h 1000 {}", w.data.display()));
    let before = w.snapshot();
    let before_real = tree(&real);
    let r = w.run(&[]);
    r.expect(
        1,
        &format!(
            "Cleanup incomplete: {} is a symlink owned by uid 1000; not followed: refused as a data dir\n",
            w.data.display()
        ),
    );
    // One story for the dir: refused, never also "no state DB found … reconciling".
    assert!(!r.stderr.contains("reconciling"), "{}", r.stderr);
    w.snapshot().assert_same(&before);
    assert_eq!(tree(&real), before_real);
}

/// No file is created where no SmolVM state is: not in a named dir that is not SmolVM's,
/// not in one that is refused.
#[test]
fn a_run_creates_no_file_where_no_smolvm_state_is() {
    let Some(w) = World::new("litter") else { return };
    let etc = Scratch::new("etc-like");
    std::fs::write(etc.0.join("dpkg.log"), b"the host's").unwrap();
    std::fs::create_dir_all(etc.0.join("disks")).unwrap();
    std::fs::write(etc.0.join("disks/golden.ext4"), b"an image").unwrap();
    let before = tree(&etc.0);
    let run = |args: &[&str]| {
        Run::from(
            bin()
                .arg("--state-dir")
                .arg(&etc.0)
                .arg("--socket-dir")
                .arg(&w.sock)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    for args in [&[][..], &["--dry-run"][..], &["--check"][..], &["--all"][..]] {
        let r = run(args);
        assert_eq!(r.code, 0, "{args:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(tree(&etc.0), before, "{args:?}");
    }
    assert_eq!(std::fs::read(etc.0.join("dpkg.log")).unwrap(), b"the host's");
    // Refused (another owner): nothing created either.
    sh(&format!("chown 4242 {}", etc.0.display()));
    let r = run(&[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(tree(&etc.0), before);
    assert!(tree(&w.sock) == [".".to_string()], "{:?}", tree(&w.sock));
}
