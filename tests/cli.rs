//! The command line as a user meets it: help, version, usage errors (exit 2, a one-line
//! message and the usage line on stderr), and the `smolvm cleanup` spelling via argv[0].

use std::process::Command;

use crate::util::{BIN, Run, Scratch, bin};

/// A data dir holding SmolVM's schema and no VM.
fn empty_state(scratch: &Scratch) -> std::path::PathBuf {
    let state = scratch.0.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let c = rusqlite::Connection::open(state.join("smolvm.db")).unwrap();
    c.execute_batch(crate::util::SCHEMA_005).unwrap();
    state
}

fn run(argv0: Option<&str>, args: &[&str]) -> Run {
    let scratch = Scratch::new("cli");
    let exe = match argv0 {
        Some(name) => {
            let link = scratch.0.join(name);
            std::os::unix::fs::symlink(BIN, &link).unwrap();
            link
        }
        None => BIN.into(),
    };
    // An empty SmolVM DB: nothing to clean, and the host's real state is never read.
    let state = empty_state(&scratch);
    Run::from(
        Command::new(exe)
            .args(args)
            .env("SMOLVM_DATA_DIR", &state)
            .env("HOME", &scratch.0)
            .output()
            .unwrap(),
    )
}

#[test]
fn help_lists_every_option_with_defaults_and_exit_codes() {
    let r = run(None, &["--help"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .starts_with("usage: smolvm-cleanup [--all] [--prefix PREFIX] [--dry-run]")
    );
    for opt in [
        "--all",
        "--prefix PREFIX",
        "--dry-run",
        "--state-dir",
        "--db",
        "--socket-dir",
        "--grace",
        "--timeout",
    ] {
        assert!(r.stdout.contains(opt), "{opt} missing from --help");
    }
    assert!(r.stdout.contains("[default: vm-]"));
    assert!(r.stdout.contains("Exit status:"));
    let r = run(Some("smolvm"), &["cleanup", "-h"]);
    assert!(r.stdout.starts_with("usage: smolvm cleanup "), "{}", r.stdout);
}

#[test]
fn version_names_the_commit() {
    let r = run(None, &["--version"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .starts_with(&format!("smolvm-cleanup {} (commit ", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(r.stdout.lines().count(), 1);
}

#[test]
fn usage_errors_exit_2_with_message_and_usage_line() {
    for args in [
        &["--prefix", ""][..],
        &["--prefix"],
        &["--bogus"],
        &["--prefix", "Bad/"],
        &["stray"],
    ] {
        let r = run(None, args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stdout.is_empty());
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {}", r.stderr);
        assert!(lines[0].starts_with("smolvm-cleanup: "));
        assert!(lines[1].starts_with("usage: smolvm-cleanup "));
    }
}

#[test]
fn smolvm_argv0_answers_cleanup_only() {
    let r = run(Some("smolvm"), &["cleanup"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "No matching VMs to clean.\n"),
        "{}",
        r.stderr
    );
    let r = run(Some("smolvm"), &["cleanup", "--dry-run", "--all"]);
    assert_eq!(r.code, 0);
    for args in [&["list"][..], &[], &["cleanup", "--nope"]] {
        let r = run(Some("smolvm"), args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(
            r.stderr
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("usage: smolvm cleanup"),
            "{}",
            r.stderr
        );
    }
    assert!(
        run(Some("smolvm"), &["list"])
            .stderr
            .contains("only provides 'cleanup'")
    );
}

#[test]
fn a_report_that_cannot_be_written_is_a_failure() {
    let scratch = Scratch::new("devfull");
    let state = empty_state(&scratch);
    for args in [&[][..], &["--json"][..], &["--dry-run"][..]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = bin()
            .args(args)
            .env("SMOLVM_DATA_DIR", &state)
            .env("HOME", &scratch.0)
            .stdout(full)
            .output()
            .unwrap();
        let r = Run::from(out);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("cannot write the report to stdout: No space left on device"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

/// Every option `--help` lists (`--all`, `-v`, `--verbose`, …).
fn help_options() -> Vec<String> {
    let help = run(None, &["--help"]).stdout;
    let options: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split_whitespace().take(2))
        .map(|w| w.trim_end_matches(',').to_string())
        .filter(|w| w.starts_with('-'))
        .collect();
    assert!(options.len() >= 15, "{options:?}");
    options
}

/// The shell completions (bash, zsh, fish) offer every option `--help` lists, and bash
/// parses its own.
#[test]
fn the_shell_completions_keep_step_with_help() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/completions");
    let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
    let (bash, zsh, fish) = (
        read("smolvm-cleanup.bash"),
        read("_smolvm-cleanup"),
        read("smolvm-cleanup.fish"),
    );
    for opt in help_options() {
        let word = |text: &str| {
            text.split(|c: char| c.is_whitespace() || "'\"[{},".contains(c))
                .any(|w| w == opt)
        };
        assert!(word(&bash), "bash completion lacks {opt}");
        assert!(word(&zsh), "zsh completion lacks {opt}");
        let fish_has = match opt.strip_prefix("--") {
            Some(long) => fish.contains(&format!(" -l {long} ")) || fish.contains(&format!(" -l {long}\n")),
            None => fish.contains(&format!(" -s {} ", &opt[1..])),
        };
        assert!(fish_has, "fish completion lacks {opt}");
    }
    let out = Command::new("bash")
        .arg("-n")
        .arg(format!("{dir}/smolvm-cleanup.bash"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The man page names every option `--help` lists, and groff finds nothing to warn about.
#[test]
fn the_man_page_keeps_step_with_help_and_formats_cleanly() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/smolvm-cleanup.1")).unwrap();
    for opt in help_options() {
        let roff = opt.replace('-', "\\-");
        assert!(page.contains(&roff), "the man page lacks {opt}");
    }
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/smolvm-cleanup.1"))
        .output()
        .expect("groff (ci/setup installs groff-base)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
