//! `smolvm-cleanup`: reclaims what SmolVM microVMs leave on a host.
//!
//! The pipeline reads top to bottom in `run`: locate the state → lock → discover (DB
//! rows, /proc, links, nft rules, files) → reconcile (pure: stale? whose resources?) →
//! plan (pure: targets and order) → report the header → apply (processes, TAPs, rules,
//! files, rows) → report the outcome. Exit codes are chosen here and nowhere else.

mod apply;
mod cli;
mod discover;
mod error;
mod files;
mod json;
mod locate;
mod lock;
mod model;
mod netlink;
mod plan;
mod process;
mod procfs;
mod reconcile;
mod report;
mod signals;
mod state;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cli::{Action, Mode, Options};
use report::{Report, Resources, Target};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const COMMIT: &str = env!("SMOLVM_CLEANUP_COMMIT");

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mode = Mode::from_argv0(&argv0);
    match cli::parse(mode, args) {
        Ok(Action::Help(m)) => {
            print!("{}", m.help());
            ExitCode::SUCCESS
        }
        Ok(Action::Version) => {
            println!("smolvm-cleanup {VERSION} (commit {COMMIT})");
            ExitCode::SUCCESS
        }
        Ok(Action::Run(opts)) => match opts.every {
            None => ExitCode::from(run(&opts)),
            Some(every) => {
                repeat(&opts, every);
                ExitCode::SUCCESS
            }
        },
        Err(e) => {
            let prog = if e.mode == Mode::Cleanup {
                "smolvm-cleanup"
            } else {
                "smolvm"
            };
            eprintln!("{prog}: {}", e.message);
            eprintln!("{}", e.mode.usage());
            ExitCode::from(2)
        }
    }
}

/// `--every`: one run, a pause, again, until SIGTERM/SIGINT (which also lets the run in
/// progress finish its step and report, as a single run does).
fn repeat(opts: &Options, every: std::time::Duration) {
    let stop = signals::install();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        run(opts);
        let until = Instant::now() + every;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(200)));
        }
    }
}

/// stderr diagnostics: warnings (yellow on a terminal unless NO_COLOR) and, with
/// `--verbose`, notes. Warnings are also kept for the JSON document.
struct Diag {
    verbose: bool,
    color: bool,
    warnings: Vec<String>,
}

impl Diag {
    fn new(verbose: bool) -> Diag {
        let color = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        Diag {
            verbose,
            color,
            warnings: Vec::new(),
        }
    }

    fn warn(&mut self, msg: String) {
        if self.color {
            eprintln!("smolvm-cleanup: \x1b[33mwarning\x1b[0m: {msg}");
        } else {
            eprintln!("smolvm-cleanup: warning: {msg}");
        }
        self.warnings.push(msg);
    }

    fn note(&self, msg: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("smolvm-cleanup: {}", msg());
        }
    }
}

/// Root with CAP_NET_ADMIN in the effective set (what TAP and nft changes need), and
/// CAP_KILL when a VMM must be stopped. Read with capget, so it holds without /proc.
fn privilege(stops_vmms: bool) -> report::Privilege {
    use rustix::thread::CapabilitySet;
    if !rustix::process::geteuid().is_root() {
        return report::Privilege::NotRoot;
    }
    let effective = rustix::thread::capabilities(None).map_or(CapabilitySet::empty(), |c| c.effective);
    let mut missing = Vec::new();
    if !effective.contains(CapabilitySet::NET_ADMIN) {
        missing.push("NET_ADMIN");
    }
    if stops_vmms && !effective.contains(CapabilitySet::KILL) {
        missing.push("KILL");
    }
    if missing.is_empty() {
        report::Privilege::Full
    } else {
        report::Privilege::Missing(missing)
    }
}

/// Will the run signal a VMM that another user owns (which takes CAP_KILL)?
fn stops_others_vmm(plan: &model::Plan, obs: &model::Observed) -> bool {
    let me = rustix::process::geteuid().as_raw();
    let owner = |pid: i32| {
        obs.procs
            .get(&pid)
            .or_else(|| obs.vmms.iter().find(|p| p.pid == pid))
            .map(|p| p.uid)
    };
    plan.targets
        .iter()
        .flat_map(|t| &t.vmms)
        .any(|v| owner(v.pid).is_some_and(|uid| uid != me))
}

/// Without procfs every VMM would look gone and every running VM stale: nothing is judged
/// and nothing changed, and the report says what to do.
fn without_proc(opts: &Options, mode: report::Mode, why: String) -> u8 {
    let report = Report {
        mode,
        privilege: privilege(false),
        all: opts.all,
        prefix: opts.prefix.clone(),
        older_than_secs: opts.older_than.map(|d| d.as_secs_f64()),
        incomplete: vec![format!(
            "{why}: without it no VMM can be told alive from gone, so nothing was looked at or \
             changed; mount it (mount -t proc proc /proc), or in a container share the host's \
             (docker run --pid=host; hostPID: true in Kubernetes)"
        )],
        ..Report::default()
    };
    let mut out = std::io::stdout().lock();
    let _ = if opts.json {
        report::write_json(&report, &mut out)
    } else if mode == report::Mode::Check {
        report::write_check(&report, &mut out)
    } else {
        report::write_header(&report, &mut out)
    };
    let _ = out.flush();
    report.exit_code()
}

fn run(opts: &Options) -> u8 {
    let start = Instant::now();
    let timing = apply::timing(start, opts.grace, opts.timeout);
    let mut diag = Diag::new(opts.verbose);
    let mode = match (opts.check, opts.dry_run) {
        (true, _) => report::Mode::Check,
        (false, true) => report::Mode::DryRun,
        (false, false) => report::Mode::Clean,
    };
    let read_only = mode != report::Mode::Clean;
    let proc_root = PathBuf::from("/proc");
    if let Some(why) = procfs::unusable(&proc_root) {
        return without_proc(opts, mode, why);
    }
    let env = locate::Env::from_process();
    let dirs = locate::resolve(opts.db.as_deref(), opts.state_dir.as_deref(), &env);
    let stop = signals::install();

    // Taken before anything is read: a second run sees what the first one left.
    let mut lock_dirs: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.dir.clone())
        .filter(|d| d.is_dir())
        .collect();
    if lock_dirs.is_empty() {
        lock_dirs.push(opts.socket_dir.clone());
    }
    let _lock = match lock::acquire(&lock_dirs, !read_only, timing.deadline, stop, &mut |m| {
        diag.warn(m)
    }) {
        Ok(held) => held,
        Err(e) => {
            eprintln!("smolvm-cleanup: {e}");
            return 1;
        }
    };

    let found = discover::discover(&discover::Config {
        data_dirs: &dirs,
        socket_dir: opts.socket_dir.clone(),
        read_only,
        deadline: timing.deadline,
        proc_root,
    });
    for (p, err) in &found.db_status {
        if err.is_none() {
            eprintln!("smolvm-cleanup: state DB: {}", p.display());
        }
    }
    if found.dbs.is_empty() {
        let looked: Vec<String> = dirs.iter().map(|d| d.dir.display().to_string()).collect();
        let place = if looked.is_empty() {
            String::new()
        } else {
            format!(" (in {})", looked.join(", "))
        };
        eprintln!("smolvm-cleanup: no state DB found{place}; reconciling from the live system");
    }
    for w in &found.warnings {
        diag.warn(w.clone());
    }
    let obs = &found.obs;
    diag.note(|| {
        let taps = obs.links.iter().filter(|l| l.is_tap()).count();
        format!(
            "found {} state rows, {} VMM processes, {} TAPs, {} SmolVM nft rules",
            obs.rows.len(),
            obs.vmms.len(),
            taps,
            obs.rules.len()
        )
    });

    let inv = reconcile::inventory(obs);
    let now = discover::now_unix();
    let plan = plan::build(
        &inv,
        &obs.links,
        &plan::Selection {
            all: opts.all,
            prefix: opts.prefix.clone(),
            min_age: opts.older_than.map(|d| d.as_secs_f64()),
            now,
        },
    );
    for w in inv.warnings.iter().chain(&plan.warnings) {
        diag.warn(w.clone());
    }
    let taken: std::collections::HashSet<&str> = plan.targets.iter().map(|t| t.id.as_str()).collect();
    for vm in inv.vms.iter().filter(|_| opts.verbose) {
        let taken = taken.contains(vm.id.as_str());
        diag.note(|| {
            let why = vm
                .stale
                .as_deref()
                .map_or(String::new(), |s| format!(" (stale: {s})"));
            let what = if taken { "target" } else { "kept" };
            format!("{}: {what}{why}", vm.id)
        });
    }

    let unattributed: Vec<String> = inv
        .unattributed
        .iter()
        .map(|f| f.path().display().to_string())
        .collect();
    if !unattributed.is_empty() {
        diag.note(|| {
            format!(
                "not SmolVM's as far as anything shows (no row, rule, socket, lock or VMM names them), left alone: {}",
                unattributed.join(", ")
            )
        });
    }
    let mut report = Report {
        mode,
        privilege: privilege(stops_others_vmm(&plan, obs)),
        all: opts.all,
        prefix: opts.prefix.clone(),
        older_than_secs: opts.older_than.map(|d| d.as_secs_f64()),
        dbs: found
            .db_status
            .iter()
            .map(|(p, e)| (p.display().to_string(), e.clone()))
            .collect(),
        stale: plan.stale.clone(),
        targets: plan
            .targets
            .iter()
            .map(|t| Target {
                id: t.id.clone(),
                stale: t.stale.clone(),
                has_row: !t.rows.is_empty(),
                // Only JSON, --check and --verbose show them.
                resources: if opts.json || opts.check || opts.verbose {
                    Resources::of(t, obs)
                } else {
                    Resources::default()
                },
            })
            .collect(),
        incomplete: found.unread.clone(),
        unattributed,
        ..Report::default()
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) must not stop the cleanup itself.
    if !opts.json && mode != report::Mode::Check {
        let _ = report::write_header(&report, &mut out);
    }

    match mode {
        report::Mode::DryRun => {}
        report::Mode::Check => {
            let failed = [found.link_error.as_ref(), found.nft_error.as_ref()];
            report
                .incomplete
                .extend(failed.into_iter().flatten().map(|e| e.to_string()));
        }
        report::Mode::Clean => {
            // With --all and nothing left, SmolVM's shared tables go too (stderr says so).
            let shared = opts.all && plan.remaining == 0 && !obs.rows_incomplete && found.nft_error.is_none();
            if !plan.targets.is_empty() {
                let mut warnings = Vec::new();
                report.outcomes = apply::apply(
                    &plan,
                    obs,
                    &mut apply::Env {
                        procfs: &found.procfs,
                        dbs: &found.dbs,
                        timing,
                        link_error: found.link_error.as_ref(),
                        nft_error: found.nft_error.as_ref(),
                        stop,
                        warn: &mut |m| warnings.push(m),
                        on_step: &mut |i, s| {
                            diag.note(|| {
                                let t = &report.targets[i];
                                let err = s.error.as_deref().map_or(String::new(), |e| format!(": {e}"));
                                let what = describe_step(s.kind, &t.resources);
                                format!("{}: {}{what} {}{err}", t.id, s.kind.name(), s.state.name())
                            })
                        },
                    },
                );
                for w in warnings {
                    diag.warn(w);
                }
            }
            if shared && report.failures() == 0 {
                match apply::remove_shared(timing.deadline, plan::shared_teardown) {
                    Ok(true) => {
                        eprintln!("smolvm-cleanup: no VM is left: removed SmolVM's shared nftables tables")
                    }
                    Ok(false) => {}
                    Err(e) => diag.warn(format!("{e}; they are kept")),
                }
            }
        }
    }

    report.warnings = std::mem::take(&mut diag.warnings);
    let _ = if opts.json {
        report::write_json(&report, &mut out)
    } else {
        match mode {
            report::Mode::Check => report::write_check(&report, &mut out),
            report::Mode::Clean if !report.targets.is_empty() => report::write_results(&report, &mut out),
            _ => Ok(()),
        }
    };
    let _ = out.flush();
    report.exit_code()
}

/// ` (tap3)`, ` (pid 7)`: what a verbose step line is about.
fn describe_step(kind: apply::StepKind, r: &Resources) -> String {
    let list = match kind {
        apply::StepKind::Process => r.vmm_pids.iter().map(|p| format!("pid {p}")).collect(),
        apply::StepKind::Tap => r.taps.clone(),
        apply::StepKind::Nft => vec![format!("{} rules", r.nft_rules + r.nft_tables.len())],
        apply::StepKind::Files => vec![format!("{} files", r.files.len())],
        apply::StepKind::Row => vec![format!("{} row{}", r.rows, if r.rows == 1 { "" } else { "s" })],
    };
    if list.is_empty() {
        String::new()
    } else {
        format!(" ({})", list.join(", "))
    }
}
