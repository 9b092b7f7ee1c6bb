//! `smolvm-cleanup`: reclaims what SmolVM microVMs leave on a host.
//!
//! The pipeline reads top to bottom in `run`: locate the state → discover (DB rows,
//! /proc, links, nft rules) → reconcile (pure: stale? whose resources?) → plan (pure:
//! targets and order) → report the header → apply (processes, TAPs, rules, files, rows)
//! → report the outcome. Exit codes are chosen here and nowhere else.

mod apply;
mod cli;
mod discover;
mod error;
mod files;
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

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cli::{Action, Mode, Options};
use report::Report;

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
        Ok(Action::Run(opts)) => run(&opts),
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

fn warn(msg: &str) {
    eprintln!("smolvm-cleanup: warning: {msg}");
}

/// Root with CAP_NET_ADMIN in the effective set: what TAP and nft changes need.
fn privileged() -> bool {
    if !rustix::process::geteuid().is_root() {
        return false;
    }
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

fn remove_shared(deadline: Instant) {
    match apply::remove_shared(deadline) {
        Ok(true) => eprintln!("smolvm-cleanup: no VM is left: removed SmolVM's shared nftables tables"),
        Ok(false) => {}
        Err(e) => warn(&format!("{e}; they are kept")),
    }
}

fn run(opts: &Options) -> ExitCode {
    let start = Instant::now();
    let timing = apply::timing(start, opts.grace, opts.timeout);
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
    let _lock = match lock::acquire(&lock_dirs, !opts.dry_run, timing.deadline, &mut |m| warn(&m)) {
        Ok(held) => held,
        Err(e) => {
            eprintln!("smolvm-cleanup: {e}");
            return ExitCode::FAILURE;
        }
    };

    let found = discover::discover(&discover::Config {
        data_dirs: &dirs,
        socket_dir: opts.socket_dir.clone(),
        read_only: opts.dry_run,
        deadline: timing.deadline,
        proc_root: PathBuf::from("/proc"),
    });
    for p in &found.db_paths {
        eprintln!("smolvm-cleanup: state DB: {}", p.display());
    }
    if found.dbs.is_empty() {
        let looked: Vec<String> = dirs.iter().map(|d| d.dir.display().to_string()).collect();
        eprintln!(
            "smolvm-cleanup: no state DB found{}; reconciling from the live system",
            if looked.is_empty() {
                String::new()
            } else {
                format!(" (in {})", looked.join(", "))
            }
        );
    }
    for w in &found.warnings {
        warn(w);
    }

    let inv = reconcile::inventory(&found.obs);
    let plan = plan::build(
        &inv,
        &found.obs.links,
        &plan::Selection {
            all: opts.all,
            prefix: opts.prefix.clone(),
        },
    );
    for w in inv.warnings.iter().chain(&plan.warnings) {
        warn(w);
    }

    let mut report = Report {
        unprivileged: !privileged(),
        stale: plan.stale.clone(),
        targets: plan.targets.iter().map(|t| t.id.clone()).collect(),
        dry_run: opts.dry_run,
        outcomes: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) must not stop the cleanup itself.
    let _ = report::write_header(&report, &mut out);
    // With --all and nothing left, SmolVM's shared tables go too (stderr says so).
    let shared = opts.all && plan.remaining == 0 && !found.obs.rows_incomplete && found.nft_error.is_none();
    if opts.dry_run || report.targets.is_empty() {
        if shared && !opts.dry_run {
            remove_shared(timing.deadline);
        }
        return ExitCode::SUCCESS;
    }

    let mut warn_fn = |m: String| warn(&m);
    report.outcomes = apply::apply(
        &plan,
        &found.obs,
        &mut apply::Env {
            procfs: &found.procfs,
            dbs: &found.dbs,
            timing,
            link_error: found.link_error.as_ref(),
            nft_error: found.nft_error.as_ref(),
            stop,
            warn: &mut warn_fn,
        },
    );
    if shared && report.failures() == 0 {
        remove_shared(timing.deadline);
    }
    let _ = report::write_results(&report, &mut out);
    let _ = out.flush();
    if report.failures() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
