//! The only place that formats stdout: the text contract of `smolvm cleanup`
//! (`../shared/spec/cli-contract.md`) line by line, the `--check` listing, and the
//! `--json` document. Writes into any `io::Write` so tests can compare bytes. The JSON
//! field names are fixed here, apart from the internal types they are filled from.
//!
//! The report's data is here; rooms: `text` (the contract and `--check`), `json`
//! (`--json`), `metrics` (`--metrics-file`).

use std::io::{self, Write};

use crate::apply::Outcome;
use crate::model::{Op, Target as PlanTarget};

mod json;
mod metrics;
mod text;

pub use json::*;
pub use metrics::*;
pub use text::*;

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
    /// VMs of a DB other hosts share that nothing on this host names: never touched,
    /// counted on stderr, listed by `-v` and `--json`.
    pub other_hosts: Vec<String>,
    /// How long each phase of the run took, in order (`-v`, `--json`).
    pub phases: Laps,
}

/// A run's phases and how long each took: each `lap` closes the phase that ran since the
/// last one.
#[derive(Debug, Clone, PartialEq)]
pub struct Laps {
    last: std::time::Instant,
    pub laps: Vec<(&'static str, f64)>,
}

impl Default for Laps {
    fn default() -> Laps {
        Laps::new(std::time::Instant::now())
    }
}

impl Laps {
    pub fn new(start: std::time::Instant) -> Laps {
        Laps {
            last: start,
            laps: Vec::new(),
        }
    }

    /// Closes the phase `name`: the time since the previous lap (or the start).
    pub fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, (now - self.last).as_secs_f64()));
        self.last = now;
    }

    /// Adds the time since the last lap to the phase `name` already closed (a phase done
    /// in two parts), else closes it as `lap` does.
    pub fn add(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        let took = (now - self.last).as_secs_f64();
        match self.laps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, s)) => *s += took,
            None => self.laps.push((name, took)),
        }
        self.last = now;
    }

    /// Takes another's laps after these (a stage timed on its own).
    pub fn extend(&mut self, other: &Laps) {
        self.laps.extend(other.laps.iter().copied());
        self.last = self.last.max(other.last);
    }

    /// `discover.dbs 4.9 ms, discover.network 14.1 ms, …, total 231.0 ms`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .laps
            .iter()
            .map(|(n, s)| format!("{n} {:.1} ms", s * 1000.0))
            .collect();
        let total: f64 = self.laps.iter().map(|(_, s)| s).sum();
        parts.push(format!("total {:.1} ms", total * 1000.0));
        parts.join(", ")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_done_in_two_parts_is_one_phase_with_both_times() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + std::time::Duration::from_millis(n);
        let mut laps = Laps::new(t0);
        laps.last = ms(2);
        laps.laps.push(("plan", 0.002));
        laps.last = ms(5);
        laps.laps.push(("discover.claims", 0.003));
        laps.last = ms(5);
        laps.add("plan");
        laps.add("finish");
        let names: Vec<&str> = laps.laps.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["plan", "discover.claims", "finish"]);
        assert!(laps.laps[0].1 >= 0.002 && laps.laps[1].1 == 0.003);
        let total: f64 = laps.laps.iter().map(|(_, s)| s).sum();
        assert!(
            total >= (laps.last - t0).as_secs_f64() - 1e-9,
            "no time is lost: {laps:?}"
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
}

#[cfg(test)]
mod testing {
    use super::*;
    use crate::apply::{Failure, Step, StepKind, StepState};
    use crate::error::Error;

    /// A target's outcome; `err` is the errno its TAP step met.
    pub fn outcome(id: &str, err: Option<i32>) -> Outcome {
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

    pub fn targets(ids: &[&str]) -> Vec<Target> {
        ids.iter()
            .map(|id| Target {
                id: id.to_string(),
                ..Target::default()
            })
            .collect()
    }

    pub fn text(r: &Report) -> String {
        let mut v = Vec::new();
        write_header(r, &mut v).unwrap();
        if r.mode == Mode::Clean && !r.targets.is_empty() {
            write_results(r, &mut v).unwrap();
        }
        String::from_utf8(v).unwrap()
    }
}
