//! The only place that formats stdout: the text contract of `smolvm cleanup`, line by line
//! (`../shared/spec/cli-contract.md`). Writes into any `io::Write` so tests can compare
//! bytes.

use std::io::{self, Write};

use crate::apply::Outcome;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Not root, or CAP_NET_ADMIN missing.
    pub unprivileged: bool,
    pub stale: Vec<String>,
    pub targets: Vec<String>,
    pub dry_run: bool,
    pub outcomes: Vec<Outcome>,
}

pub const NOT_ROOT_WARNING: &str =
    "Warning: not running as root. Cleanup may fail for TAP/nftables resources.";

impl Report {
    pub fn failures(&self) -> usize {
        self.outcomes.iter().filter(|o| o.error().is_some()).count()
    }
}

/// Everything printed before anything is changed: warning, stale VMs, targets, and for a
/// dry run or an empty target list the closing line too.
pub fn write_header(r: &Report, w: &mut impl Write) -> io::Result<()> {
    if r.unprivileged {
        writeln!(w, "{NOT_ROOT_WARNING}")?;
    }
    if !r.stale.is_empty() {
        writeln!(w, "Reconciled stale VMs: {}", r.stale.join(", "))?;
    }
    if r.targets.is_empty() {
        return writeln!(w, "No matching VMs to clean.");
    }
    writeln!(w, "Targets ({}):", r.targets.len())?;
    for id in &r.targets {
        writeln!(w, "  - {id}")?;
    }
    if r.dry_run {
        writeln!(w, "Dry run complete. No changes made.")?;
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
        0 => writeln!(w, "Cleanup complete.")?,
        n => writeln!(w, "Cleanup completed with {n} failure(s).")?,
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{Step, StepKind, StepState};

    fn outcome(id: &str, err: Option<&str>) -> Outcome {
        Outcome {
            id: id.into(),
            steps: vec![Step {
                kind: StepKind::Tap,
                state: if err.is_some() {
                    StepState::Failed
                } else {
                    StepState::Removed
                },
                error: err.map(String::from),
            }],
        }
    }

    fn text(r: &Report) -> String {
        let mut v = Vec::new();
        write_header(r, &mut v).unwrap();
        if !r.dry_run && !r.targets.is_empty() {
            write_results(r, &mut v).unwrap();
        }
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn dry_run_example_from_the_contract() {
        let r = Report {
            stale: vec!["vm-12345".into()],
            targets: vec!["vm-12345".into(), "vm-test-1".into(), "vm-demo".into()],
            dry_run: true,
            ..Report::default()
        };
        assert_eq!(
            text(&r),
            "Reconciled stale VMs: vm-12345\nTargets (3):\n  - vm-12345\n  - vm-test-1\n  - vm-demo\n\
             Dry run complete. No changes made.\n"
        );
    }

    #[test]
    fn failure_example_from_the_contract() {
        let r = Report {
            targets: vec!["vm-test-1".into(), "vm-test-2".into(), "vm-test-3".into()],
            outcomes: vec![
                outcome("vm-test-1", None),
                outcome("vm-test-2", Some("Permission denied")),
                outcome("vm-test-3", None),
            ],
            ..Report::default()
        };
        assert_eq!(
            text(&r),
            "Targets (3):\n  - vm-test-1\n  - vm-test-2\n  - vm-test-3\nDeleted: vm-test-1\n\
             Failed:  vm-test-2 (Permission denied)\nDeleted: vm-test-3\nCleanup completed with 1 failure(s).\n"
        );
        assert_eq!(r.failures(), 1);
    }

    #[test]
    fn warning_and_nothing_to_do() {
        let r = Report {
            unprivileged: true,
            ..Report::default()
        };
        assert_eq!(
            text(&r),
            format!("{NOT_ROOT_WARNING}\nNo matching VMs to clean.\n")
        );
    }

    #[test]
    fn multiple_stale_are_joined() {
        let r = Report {
            stale: vec!["vm-1".into(), "vm-2".into()],
            targets: vec!["vm-1".into(), "vm-2".into()],
            outcomes: vec![outcome("vm-1", None), outcome("vm-2", None)],
            ..Report::default()
        };
        assert!(text(&r).starts_with("Reconciled stale VMs: vm-1, vm-2\n"));
        assert!(text(&r).ends_with("Deleted: vm-2\nCleanup complete.\n"));
    }
}
