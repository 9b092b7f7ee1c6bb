//! The text contract of `smolvm cleanup` (`../shared/spec/cli-contract.md`), line by
//! line: the header (`Reconciled stale VMs:`, `Targets (N):`), the results (`Deleted:`,
//! `Failed:`, `Cleanup complete.`), and the `--check` listing.

use std::io::{self, Write};

use super::{Mode, Report};

/// Everything printed before anything is changed: warning, stale VMs, targets, and for a
/// dry run or an empty target list the closing line too.
///
/// A run that could not see everything never says `No matching VMs to clean.` or
/// `Dry run complete.`: it says what it could not see instead.
pub fn write_header(r: &Report, w: &mut impl Write) -> io::Result<()> {
    if let Some(line) = r.privilege.warning() {
        writeln!(w, "{line}")?;
    }
    if !r.stale.is_empty() {
        writeln!(w, "Reconciled stale VMs: {}", r.stale.join(", "))?;
    }
    if r.targets.is_empty() && !r.incomplete.is_empty() {
        r.write_incomplete(w)?;
        if r.mode == Mode::DryRun {
            writeln!(w, "No changes made.")?;
        }
        return w.flush();
    }
    if r.targets.is_empty() {
        return writeln!(w, "No matching VMs to clean.");
    }
    writeln!(w, "Targets ({}):", r.targets.len())?;
    for t in &r.targets {
        writeln!(w, "  - {}", t.id)?;
    }
    if r.mode == Mode::DryRun {
        if r.incomplete.is_empty() {
            writeln!(w, "Dry run complete. No changes made.")?;
        } else {
            r.write_incomplete(w)?;
            writeln!(w, "No changes made.")?;
        }
    }
    w.flush()
}

/// One line per target in target order, then the summary.
pub fn write_results(r: &Report, w: &mut impl Write) -> io::Result<()> {
    for o in &r.outcomes {
        match o.error() {
            None => writeln!(w, "Deleted: {}", o.id)?,
            Some(e) => writeln!(w, "Failed:  {} ({})", o.id, e)?,
        }
    }
    match r.failures() {
        0 if r.incomplete.is_empty() => writeln!(w, "Cleanup complete.")?,
        0 => {}
        n => writeln!(w, "Cleanup completed with {n} failure(s).")?,
    }
    r.write_incomplete(w)?;
    w.flush()
}

/// `--check`: what cleanup would take, with what each still has.
pub fn write_check(r: &Report, w: &mut impl Write) -> io::Result<()> {
    if let Some(line) = r.privilege.warning() {
        writeln!(w, "{line}")?;
    }
    if r.targets.is_empty() && r.incomplete.is_empty() {
        writeln!(w, "No leaked SmolVM resources.")?;
    } else if !r.targets.is_empty() {
        writeln!(w, "Leaked SmolVM resources ({}):", r.targets.len())?;
        for t in &r.targets {
            writeln!(w, "  - {}: {}", t.id, t.resources.describe())?;
        }
    }
    r.write_incomplete(w)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    #[test]
    fn dry_run_example_from_the_contract() {
        let r = Report {
            stale: vec!["vm-12345".into()],
            targets: targets(&["vm-12345", "vm-test-1", "vm-demo"]),
            mode: Mode::DryRun,
            ..Report::default()
        };
        assert_eq!(
            text(&r),
            "Reconciled stale VMs: vm-12345\nTargets (3):\n  - vm-12345\n  - vm-test-1\n  - vm-demo\n\
             Dry run complete. No changes made.\n"
        );
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn failure_example_from_the_contract() {
        let r = Report {
            targets: targets(&["vm-test-1", "vm-test-2", "vm-test-3"]),
            outcomes: vec![
                outcome("vm-test-1", None),
                outcome("vm-test-2", Some(libc::EPERM)),
                outcome("vm-test-3", None),
            ],
            ..Report::default()
        };
        assert_eq!(
            text(&r),
            "Targets (3):\n  - vm-test-1\n  - vm-test-2\n  - vm-test-3\nDeleted: vm-test-1\n\
             Failed:  vm-test-2 (Permission denied: cannot delete TAP device tap3)\nDeleted: vm-test-3\nCleanup completed with 1 failure(s).\n"
        );
        assert_eq!((r.failures(), r.exit_code()), (1, 1));
    }

    #[test]
    fn warning_and_nothing_to_do() {
        let r = Report {
            privilege: Privilege::NotRoot,
            ..Report::default()
        };
        assert_eq!(
            text(&r),
            format!("{NOT_ROOT_WARNING}\nNo matching VMs to clean.\n")
        );
    }

    #[test]
    fn an_incomplete_run_never_says_nothing_to_do_and_exits_1() {
        let why = "Permission denied: cannot open state DB /d/smolvm.db";
        let r = Report {
            incomplete: vec![why.into()],
            ..Report::default()
        };
        assert_eq!(text(&r), format!("Cleanup incomplete: {why}\n"));
        assert_eq!(r.exit_code(), 1);
        let dry = Report {
            mode: Mode::DryRun,
            targets: targets(&["vm-1"]),
            ..r.clone()
        };
        assert_eq!(
            text(&dry),
            format!("Targets (1):\n  - vm-1\nDry run incomplete: {why}\nNo changes made.\n")
        );
        assert_eq!(dry.exit_code(), 1);
        // Targets of the DBs that were read are cleaned; the last line says what was not.
        let done = Report {
            targets: targets(&["vm-1"]),
            outcomes: vec![outcome("vm-1", None)],
            ..r
        };
        assert!(
            text(&done).ends_with(&format!("Deleted: vm-1\nCleanup incomplete: {why}\n")),
            "{}",
            text(&done)
        );
        assert_eq!(done.exit_code(), 1);
    }

    #[test]
    fn multiple_stale_are_joined() {
        let r = Report {
            stale: vec!["vm-1".into(), "vm-2".into()],
            targets: targets(&["vm-1", "vm-2"]),
            outcomes: vec![outcome("vm-1", None), outcome("vm-2", None)],
            ..Report::default()
        };
        assert!(text(&r).starts_with("Reconciled stale VMs: vm-1, vm-2\n"));
        assert!(text(&r).ends_with("Deleted: vm-2\nCleanup complete.\n"));
    }

    #[test]
    fn check_lists_leaks_with_their_resources() {
        let mut r = Report {
            mode: Mode::Check,
            targets: targets(&["vm-1"]),
            ..Report::default()
        };
        r.targets[0].resources = Resources {
            vmm_pids: vec![7],
            taps: vec!["tap3".into()],
            nft_rules: 5,
            files: vec!["/a".into(), "/b".into()],
            rows: 1,
            ..Resources::default()
        };
        let mut v = Vec::new();
        write_check(&r, &mut v).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "Leaked SmolVM resources (1):\n  - vm-1: VMM pid 7, TAP tap3, 5 nft rules, 2 files, state row\n"
        );
        assert_eq!(r.exit_code(), 1);
        let clean = Report {
            mode: Mode::Check,
            ..Report::default()
        };
        let mut v = Vec::new();
        write_check(&clean, &mut v).unwrap();
        assert_eq!(v, b"No leaked SmolVM resources.\n");
        assert_eq!(clean.exit_code(), 0);
        let blind = Report {
            incomplete: vec!["Permission denied: cannot list nftables rules".into()],
            ..clean
        };
        assert_eq!(blind.exit_code(), 1);
    }
}
