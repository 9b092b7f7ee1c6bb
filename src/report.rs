//! The only place that formats stdout: the text contract of `smolvm cleanup`
//! (`../shared/spec/cli-contract.md`) line by line, the `--check` listing, and the
//! `--json` document. Writes into any `io::Write` so tests can compare bytes. The JSON
//! field names are fixed here, apart from the internal types they are filled from.

use std::io::{self, Write};

use crate::apply::Outcome;
use crate::json::Json;
use crate::model::{Op, Target as PlanTarget};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Clean,
    DryRun,
    Check,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Clean => "cleanup",
            Mode::DryRun => "dry_run",
            Mode::Check => "check",
        }
    }
}

/// What a target has on the host, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub vmm_pids: Vec<i32>,
    pub taps: Vec<String>,
    pub nft_rules: usize,
    pub nft_tables: Vec<String>,
    /// Its entries in SmolVM's maps and sets.
    pub nft_elements: usize,
    pub files: Vec<String>,
    pub rows: usize,
}

impl Resources {
    pub fn of(t: &PlanTarget) -> Resources {
        Resources {
            vmm_pids: t.vmms.iter().map(|v| v.pid).collect(),
            taps: t.taps.iter().map(|l| l.name.clone()).collect(),
            nft_rules: t.nft.iter().filter(|op| matches!(op, Op::Rule { .. })).count(),
            nft_elements: t.nft.iter().filter(|op| matches!(op, Op::Elem { .. })).count(),
            nft_tables: t
                .nft
                .iter()
                .filter_map(|op| match op {
                    Op::Table { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect(),
            files: t.files.iter().map(|f| f.path().display().to_string()).collect(),
            rows: t.rows.len(),
        }
    }

    /// `VMM pid 7, TAP tap3, 5 nft rules, 2 files, state row`.
    pub fn describe(&self) -> String {
        let plural = |n: usize, one: &str| {
            if n == 1 {
                format!("1 {one}")
            } else {
                format!("{n} {one}s")
            }
        };
        let mut parts: Vec<String> = self.vmm_pids.iter().map(|p| format!("VMM pid {p}")).collect();
        parts.extend(self.taps.iter().map(|t| format!("TAP {t}")));
        if self.nft_rules > 0 {
            parts.push(plural(self.nft_rules, "nft rule"));
        }
        parts.extend(self.nft_tables.iter().map(|t| format!("nft table {t}")));
        if self.nft_elements > 0 {
            parts.push(plural(self.nft_elements, "nft element"));
        }
        if !self.files.is_empty() {
            parts.push(plural(self.files.len(), "file"));
        }
        if self.rows > 0 {
            parts.push(if self.rows == 1 {
                "state row".into()
            } else {
                format!("{} state rows", self.rows)
            });
        }
        if parts.is_empty() {
            parts.push("state only".into());
        }
        parts.join(", ")
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    pub id: String,
    /// Why it is stale, when it is.
    pub stale: Option<String>,
    pub has_row: bool,
    pub resources: Resources,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub mode: Mode,
    /// Root with the capabilities cleanup needs, or what is missing.
    pub privilege: Privilege,
    pub all: bool,
    pub prefix: String,
    pub older_than_secs: Option<f64>,
    /// Each state DB looked at: its path, whose it is (`SmolVM`, `Celesto`), and why it
    /// could not be read.
    pub dbs: Vec<(String, &'static str, Option<String>)>,
    pub stale: Vec<String>,
    pub targets: Vec<Target>,
    pub outcomes: Vec<Outcome>,
    pub warnings: Vec<String>,
    /// What the run could not see (a state DB not read, no /proc; for `--check` a listing
    /// too): it cannot vouch for the host, so it exits 1 whatever it did.
    pub incomplete: Vec<String>,
    /// Files named like a VM's that nothing corroborates: never touched, listed by `-v`
    /// and `--json`.
    pub unattributed: Vec<String>,
}

/// Whether the run may change what cleanup changes: TAPs and nft rules need root with
/// CAP_NET_ADMIN; stopping another user's VMM needs CAP_KILL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Privilege {
    #[default]
    Full,
    NotRoot,
    /// Root, without these capabilities (`NET_ADMIN`, `KILL`, `FOWNER`, `DAC_OVERRIDE`,
    /// `SYS_PTRACE`).
    Missing(Vec<&'static str>),
}

impl Privilege {
    /// The first line of the output, when one is due. A non-root user gets SmolVM's own
    /// words; root without a capability is told which one and how to grant it.
    pub fn warning(&self) -> Option<String> {
        let caps = match self {
            Privilege::Full => return None,
            Privilege::NotRoot => return Some(NOT_ROOT_WARNING.into()),
            Privilege::Missing(caps) => caps,
        };
        let names: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
        let what: Vec<&str> = caps
            .iter()
            .map(|&c| match c {
                "KILL" => "VMM processes",
                "FOWNER" => "other users' files in /tmp",
                "DAC_OVERRIDE" => "files in directories root may not write",
                "SYS_PTRACE" => "the TAPs other users' VMMs hold",
                _ => "TAP/nftables resources",
            })
            .collect();
        let docker: Vec<String> = caps.iter().map(|c| format!("--cap-add {c}")).collect();
        let k8s: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
        Some(format!(
            "Warning: running as root without {}. Cleanup may fail for {}; grant {} \
             (docker run {}, or securityContext.capabilities.add: [{}] in Kubernetes).",
            names.join(" and "),
            what.join(" and "),
            if caps.len() == 1 { "it" } else { "them" },
            docker.join(" "),
            k8s.join(", ")
        ))
    }
}

pub const NOT_ROOT_WARNING: &str =
    "Warning: not running as root. Cleanup may fail for TAP/nftables resources.";

impl Report {
    pub fn failures(&self) -> usize {
        self.outcomes.iter().filter(|o| o.error().is_some()).count()
    }

    pub fn exit_code(&self) -> u8 {
        let bad = match self.mode {
            Mode::Clean => self.failures() > 0,
            Mode::DryRun => false,
            Mode::Check => !self.targets.is_empty(),
        };
        u8::from(bad || !self.incomplete.is_empty())
    }

    /// `Cleanup incomplete: …`, `Dry run incomplete: …`, `Check incomplete: …`.
    fn write_incomplete(&self, w: &mut impl Write) -> io::Result<()> {
        let what = match self.mode {
            Mode::Clean => "Cleanup",
            Mode::DryRun => "Dry run",
            Mode::Check => "Check",
        };
        for why in &self.incomplete {
            writeln!(w, "{what} incomplete: {why}")?;
        }
        Ok(())
    }
}

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

/// When and how long a run took, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunTime {
    /// Unix seconds when the run ended.
    pub ended: f64,
    pub seconds: f64,
}

/// Prometheus text exposition of the run, for node_exporter's textfile collector: gauges
/// of the last run (base units, no `_total`: each run rewrites the file), and per kind
/// what was removed, or with `--check` what is left.
pub fn write_metrics(r: &Report, t: RunTime, w: &mut impl Write) -> io::Result<()> {
    let mode = r.mode.name();
    let gauge = |w: &mut dyn Write, name: &str, help: &str, value: f64| -> io::Result<()> {
        writeln!(w, "# HELP smolvm_cleanup_{name} {help}")?;
        writeln!(w, "# TYPE smolvm_cleanup_{name} gauge")?;
        writeln!(w, "smolvm_cleanup_{name}{{mode=\"{mode}\"}} {}", finite(value))
    };
    let count = |n: usize| f64::from(u32::try_from(n).unwrap_or(u32::MAX));
    let failed = r.failures();
    let deleted = if r.mode == Mode::Clean {
        r.outcomes.len() - failed
    } else {
        0
    };
    gauge(
        w,
        "last_run_timestamp_seconds",
        "Unix time the last run ended.",
        t.ended,
    )?;
    gauge(
        w,
        "last_run_duration_seconds",
        "How long the last run took.",
        t.seconds,
    )?;
    gauge(
        w,
        "last_run_success",
        "1 when the last run exited 0, else 0.",
        if r.exit_code() == 0 { 1.0 } else { 0.0 },
    )?;
    gauge(
        w,
        "last_run_stale_vms",
        "VMs the last run found stale.",
        count(r.stale.len()),
    )?;
    gauge(
        w,
        "last_run_targets",
        "VMs the last run targeted (with --check: leaked).",
        count(r.targets.len()),
    )?;
    gauge(
        w,
        "last_run_deleted_vms",
        "VMs the last run deleted.",
        count(deleted),
    )?;
    gauge(
        w,
        "last_run_failed_vms",
        "VMs the last run failed to delete.",
        count(failed),
    )?;
    gauge(
        w,
        "last_run_incomplete",
        "1 when the last run could not see everything.",
        if r.incomplete.is_empty() { 0.0 } else { 1.0 },
    )?;
    // Per kind: what the deleted VMs had (a cleanup), or what the targets still have.
    let counted: Vec<&Target> = match r.mode {
        Mode::Clean => r
            .targets
            .iter()
            .zip(&r.outcomes)
            .filter(|(_, o)| o.error().is_none())
            .map(|(t, _)| t)
            .collect(),
        Mode::DryRun | Mode::Check => r.targets.iter().collect(),
    };
    let sum = |f: &dyn Fn(&Resources) -> usize| count(counted.iter().map(|t| f(&t.resources)).sum());
    let kinds: [(&str, f64); 7] = [
        ("vmm", sum(&|x| x.vmm_pids.len())),
        ("tap", sum(&|x| x.taps.len())),
        ("nft_rule", sum(&|x| x.nft_rules)),
        ("nft_table", sum(&|x| x.nft_tables.len())),
        ("nft_element", sum(&|x| x.nft_elements)),
        ("file", sum(&|x| x.files.len())),
        ("state_row", sum(&|x| x.rows)),
    ];
    let what = if r.mode == Mode::Clean {
        "removed"
    } else {
        "left (would be removed)"
    };
    writeln!(
        w,
        "# HELP smolvm_cleanup_last_run_resources Resources the last run {what}, by kind."
    )?;
    writeln!(w, "# TYPE smolvm_cleanup_last_run_resources gauge")?;
    for (kind, n) in kinds {
        writeln!(
            w,
            "smolvm_cleanup_last_run_resources{{mode=\"{mode}\",kind=\"{kind}\"}} {n}"
        )?;
    }
    w.flush()
}

/// A sample value: finite, or 0 (Prometheus would take NaN, but it means nothing here).
fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// The `--json` document (schema in the README).
pub fn write_json(r: &Report, w: &mut impl Write) -> io::Result<()> {
    let mut j = Json::new(true);
    j.begin_obj();
    j.key("version").str(env!("CARGO_PKG_VERSION"));
    j.key("mode").str(r.mode.name());
    j.key("all").bool(r.all);
    j.key("prefix").str(&r.prefix);
    j.key("older_than_seconds");
    match r.older_than_secs {
        Some(s) => j.num(s),
        None => j.null(),
    };
    j.key("privileged").bool(r.privilege == Privilege::Full);
    let missing: Vec<String> = match &r.privilege {
        Privilege::Missing(caps) => caps.iter().map(|c| format!("CAP_{c}")).collect(),
        _ => Vec::new(),
    };
    j.key("missing_capabilities")
        .str_arr(missing.iter().map(String::as_str));
    j.key("state_dbs").begin_arr();
    for (path, family, err) in &r.dbs {
        j.begin_obj();
        j.key("path").str(path);
        j.key("family").str(family);
        j.key("read").bool(err.is_none());
        j.key("error").opt_str(err.as_deref());
        j.end_obj();
    }
    j.end_arr();
    j.key("stale").str_arr(r.stale.iter().map(String::as_str));
    j.key("targets").begin_arr();
    for (i, t) in r.targets.iter().enumerate() {
        let outcome = r.outcomes.get(i);
        j.begin_obj();
        j.key("id").str(&t.id);
        j.key("stale").bool(t.stale.is_some());
        j.key("stale_reason").opt_str(t.stale.as_deref());
        j.key("has_row").bool(t.has_row);
        write_resources(&mut j, &t.resources);
        let (state, error) = match (r.mode, outcome) {
            (Mode::DryRun, _) => ("would_delete", None),
            (Mode::Check, _) => ("leaked", None),
            (Mode::Clean, Some(o)) => match o.error() {
                None => ("deleted", None),
                Some(e) => ("failed", Some(e.to_string())),
            },
            (Mode::Clean, None) => ("not_run", None),
        };
        j.key("outcome").str(state);
        j.key("error").opt_str(error.as_deref());
        j.key("steps").begin_arr();
        for s in outcome.map(|o| o.steps.as_slice()).unwrap_or_default() {
            j.begin_obj();
            j.key("step").str(s.kind.name());
            j.key("state").str(s.state.name());
            j.key("error")
                .opt_str(s.error.as_ref().map(ToString::to_string).as_deref());
            j.end_obj();
        }
        j.end_arr();
        j.end_obj();
    }
    j.end_arr();
    j.key("incomplete")
        .str_arr(r.incomplete.iter().map(String::as_str));
    j.key("unattributed_files")
        .str_arr(r.unattributed.iter().map(String::as_str));
    j.key("warnings").str_arr(r.warnings.iter().map(String::as_str));
    let failed = r.failures();
    j.key("summary").begin_obj();
    j.key("stale").num(r.stale.len());
    j.key("targets").num(r.targets.len());
    j.key("deleted").num(if r.mode == Mode::Clean {
        r.outcomes.len() - failed
    } else {
        0
    });
    j.key("failed").num(failed);
    j.end_obj();
    j.key("exit_code").num(r.exit_code());
    j.end_obj();
    w.write_all(j.finish().as_bytes())?;
    w.flush()
}

fn write_resources(j: &mut Json, r: &Resources) {
    j.key("resources").begin_obj();
    j.key("vmm_pids").begin_arr();
    for p in &r.vmm_pids {
        j.num(*p);
    }
    j.end_arr();
    j.key("taps").str_arr(r.taps.iter().map(String::as_str));
    j.key("nft_rules").num(r.nft_rules);
    j.key("nft_elements").num(r.nft_elements);
    j.key("nft_tables")
        .str_arr(r.nft_tables.iter().map(String::as_str));
    j.key("files").str_arr(r.files.iter().map(String::as_str));
    j.key("rows").num(r.rows);
    j.end_obj();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{Failure, Step, StepKind, StepState};
    use crate::error::Error;

    /// A target's outcome; `err` is the errno its TAP step met.
    fn outcome(id: &str, err: Option<i32>) -> Outcome {
        Outcome {
            id: id.into(),
            steps: vec![Step {
                kind: StepKind::Tap,
                state: if err.is_some() {
                    StepState::Failed
                } else {
                    StepState::Removed
                },
                error: err.map(|e| Failure::Error(Error::errno("delete TAP device tap3", e))),
            }],
        }
    }

    fn targets(ids: &[&str]) -> Vec<Target> {
        ids.iter()
            .map(|id| Target {
                id: id.to_string(),
                ..Target::default()
            })
            .collect()
    }

    fn text(r: &Report) -> String {
        let mut v = Vec::new();
        write_header(r, &mut v).unwrap();
        if r.mode == Mode::Clean && !r.targets.is_empty() {
            write_results(r, &mut v).unwrap();
        }
        String::from_utf8(v).unwrap()
    }

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
    fn root_without_a_capability_is_told_which_and_how_to_grant_it() {
        let one = Privilege::Missing(vec!["NET_ADMIN"]).warning().unwrap();
        assert_eq!(
            one,
            "Warning: running as root without CAP_NET_ADMIN. Cleanup may fail for TAP/nftables \
             resources; grant it (docker run --cap-add NET_ADMIN, or securityContext.capabilities.add: \
             [\"NET_ADMIN\"] in Kubernetes)."
        );
        let two = Privilege::Missing(vec!["NET_ADMIN", "KILL"]).warning().unwrap();
        assert!(two.contains("without CAP_NET_ADMIN and CAP_KILL"), "{two}");
        assert!(two.contains("--cap-add NET_ADMIN --cap-add KILL"), "{two}");
        assert!(two.contains("TAP/nftables resources and VMM processes"), "{two}");
        assert_eq!(Privilege::Full.warning(), None);
        let ptrace = Privilege::Missing(vec!["SYS_PTRACE", "DAC_OVERRIDE"])
            .warning()
            .unwrap();
        assert_eq!(
            ptrace,
            "Warning: running as root without CAP_SYS_PTRACE and CAP_DAC_OVERRIDE. Cleanup may fail \
             for the TAPs other users' VMMs hold and files in directories root may not write; grant \
             them (docker run --cap-add SYS_PTRACE --cap-add DAC_OVERRIDE, or \
             securityContext.capabilities.add: [\"SYS_PTRACE\", \"DAC_OVERRIDE\"] in Kubernetes)."
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

    #[test]
    fn metrics_have_help_type_and_the_runs_numbers() {
        let mut r = Report {
            targets: targets(&["vm-1", "vm-2"]),
            outcomes: vec![outcome("vm-1", None), outcome("vm-2", Some(libc::EPERM))],
            ..Report::default()
        };
        r.targets[0].resources.taps = vec!["tap2".into()];
        r.targets[1].resources.taps = vec!["tap3".into()];
        let mut v = Vec::new();
        let t = RunTime {
            ended: 1_800_000_000.5,
            seconds: f64::NAN,
        };
        write_metrics(&r, t, &mut v).unwrap();
        let text = String::from_utf8(v).unwrap();
        for line in [
            "# TYPE smolvm_cleanup_last_run_success gauge",
            "smolvm_cleanup_last_run_success{mode=\"cleanup\"} 0",
            "smolvm_cleanup_last_run_timestamp_seconds{mode=\"cleanup\"} 1800000000.5",
            "smolvm_cleanup_last_run_duration_seconds{mode=\"cleanup\"} 0",
            "smolvm_cleanup_last_run_deleted_vms{mode=\"cleanup\"} 1",
            "smolvm_cleanup_last_run_failed_vms{mode=\"cleanup\"} 1",
            // Only what the deleted VM had counts as removed.
            "smolvm_cleanup_last_run_resources{mode=\"cleanup\",kind=\"tap\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "lacks {line:?}:\n{text}");
        }
        assert!(!text.contains("_total"), "gauges only: {text}");
    }
}
