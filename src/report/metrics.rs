//! `--metrics-file`: the run's numbers as Prometheus text, for node-exporter's textfile
//! collector.

use std::io::{self, Write};

use super::{Mode, Report, Resources, Target};

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
    let gauges: [(&str, &str, f64); 9] = [
        (
            "last_run_timestamp_seconds",
            "Unix time the last run ended.",
            t.ended,
        ),
        (
            "last_run_duration_seconds",
            "How long the last run took.",
            t.seconds,
        ),
        (
            "last_run_success",
            "1 when the last run exited 0, else 0.",
            if r.exit_code() == 0 { 1.0 } else { 0.0 },
        ),
        (
            "last_run_stale_vms",
            "VMs the last run found stale.",
            count(r.stale.len()),
        ),
        (
            "last_run_targets",
            "VMs the last run targeted (with --check: leaked).",
            count(r.targets.len()),
        ),
        (
            "last_run_deleted_vms",
            "VMs the last run deleted.",
            count(deleted),
        ),
        (
            "last_run_failed_vms",
            "VMs the last run failed to delete.",
            count(failed),
        ),
        (
            "last_run_other_host_vms",
            "Rows of a shared state DB that nothing on this host names (left alone).",
            count(r.other_hosts.len()),
        ),
        (
            "last_run_incomplete",
            "1 when the last run could not see everything.",
            if r.incomplete.is_empty() { 0.0 } else { 1.0 },
        ),
    ];
    for (name, help, value) in gauges {
        gauge(w, name, help, value)?;
    }
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

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
