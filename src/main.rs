//! `smolvm-cleanup`: reclaims what SmolVM microVMs leave on a host.
//!
//! The pipeline reads top to bottom in `run`: locate the state → lock → discover (DB
//! rows, /proc, links, nft rules, files) → reconcile (pure: stale? whose resources?) →
//! plan (pure: targets and order) → report the header → apply (processes, TAPs, rules,
//! files, rows) → report the outcome. Exit codes are chosen here and nowhere else.
//!
//! Longer than ~500 lines: the whole pipeline and the exit-code table sit here on purpose,
//! so a reader sees every stage and every way a run ends in one file.

mod apply;
mod cli;
mod diag;
mod discover;
mod error;
mod files;
mod heap;
mod json;
mod locate;
mod lock;
mod model;
mod netlink;
mod pg;
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
use diag::Diag;
use report::{Report, Resources, Target};

#[global_allocator]
static HEAP: heap::Heap = heap::Heap::new();

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
    let stop = signals::install().unwrap_or_else(|e| {
        eprintln!("smolvm-cleanup: warning: cannot handle SIGINT/SIGTERM ({e})");
        signals::flag()
    });
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

/// The capabilities a run may call for, by the name `report` shows (`CAP_<name>`).
const CAPS: [(&str, rustix::thread::CapabilitySet); 5] = [
    ("NET_ADMIN", rustix::thread::CapabilitySet::NET_ADMIN),
    ("KILL", rustix::thread::CapabilitySet::KILL),
    ("SYS_PTRACE", rustix::thread::CapabilitySet::SYS_PTRACE),
    ("FOWNER", rustix::thread::CapabilitySet::FOWNER),
    ("DAC_OVERRIDE", rustix::thread::CapabilitySet::DAC_OVERRIDE),
];

/// The effective capabilities, read with capget (so it holds without /proc).
fn effective_caps() -> rustix::thread::CapabilitySet {
    rustix::thread::capabilities(None).map_or(rustix::thread::CapabilitySet::empty(), |c| c.effective)
}

/// Root with every capability this run needs in the effective set, or which are missing.
/// NET_ADMIN is always needed; `wanted` names the others this run's targets and processes
/// call for (`needed_caps`).
fn privilege(wanted: &[&'static str]) -> report::Privilege {
    if !rustix::process::geteuid().is_root() {
        return report::Privilege::NotRoot;
    }
    let effective = effective_caps();
    let missing: Vec<&'static str> = CAPS
        .iter()
        .filter(|(name, cap)| (*name == "NET_ADMIN" || wanted.contains(name)) && !effective.contains(*cap))
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        report::Privilege::Full
    } else {
        report::Privilege::Missing(missing)
    }
}

/// The capabilities beyond NET_ADMIN that what this run will touch calls for, when it is
/// not the user's own: KILL to stop another user's VMM, SYS_PTRACE to read which TAP
/// another user's VMM holds (its fds) and what it sees (its root), FOWNER to remove
/// another user's file from a sticky directory another user owns (root may remove any file
/// from root's `/tmp`), DAC_OVERRIDE to remove a file from a directory root's uid may not
/// write, or to probe whether another user's socket is served. The target files are only
/// looked at when root lacks FOWNER or DAC_OVERRIDE (a thousand VMs have thousands).
fn needed_caps(plan: &model::Plan, obs: &model::Observed) -> Vec<&'static str> {
    use rustix::thread::CapabilitySet;
    let me = rustix::process::geteuid().as_raw();
    let mut out = Vec::new();
    if stops_others_vmm(plan, obs) {
        out.push("KILL");
    }
    if obs.vmms.iter().any(|p| p.uid != me) {
        out.push("SYS_PTRACE");
    }
    let effective = effective_caps();
    let (fowner, dac) = if effective.contains(CapabilitySet::FOWNER | CapabilitySet::DAC_OVERRIDE) {
        (false, false)
    } else {
        files::access_needs(plan.targets.iter().flat_map(|t| &t.files), me)
    };
    if fowner {
        out.push("FOWNER");
    }
    // Also to probe another user's socket: whether its VM lives is otherwise unknown.
    if dac || obs.probes_denied {
        out.push("DAC_OVERRIDE");
    }
    out
}

/// Who may own a data dir: root, the user cleanup runs as, and under sudo the user who
/// invoked it (whose `~/.local/state/smolvm` SmolVM uses).
fn owners(env: &locate::Env) -> Vec<u32> {
    let mut out = vec![0, env.euid];
    if let Some(uid) = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
        out.push(uid);
    }
    out
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

/// One run: the mode's function gathers and acts and returns its `Report`; `Out` prints
/// it; its exit code is the run's (a usage error's 2 is `main`'s).
fn run(opts: &Options) -> u8 {
    let started = Instant::now();
    let mut diag = Diag::new(opts.verbose);
    let mut out = Out::new(opts.json);
    let mode = if opts.check {
        report::Mode::Check
    } else if opts.dry_run {
        report::Mode::DryRun
    } else {
        report::Mode::Clean
    };
    let done = match mode {
        report::Mode::Clean => clean(opts, &mut diag, &mut out),
        report::Mode::DryRun => survey(opts, mode, &mut diag).map(|mut s| {
            let report = std::mem::take(&mut s.report);
            s.release(opts);
            report
        }),
        report::Mode::Check => check(opts, &mut diag),
    };
    let report = match done {
        Ok(mut report) => {
            report.warnings = std::mem::take(&mut diag.warnings);
            report
        }
        Err(Stop::Blind(report)) => *report,
        Err(Stop::Fatal(e)) => {
            eprintln!("smolvm-cleanup: {e}");
            return 1;
        }
    };
    let mut report = report;
    report.phases.lap("finish");
    diag.note(|| format!("phases: {}", report.phases.describe()));
    let printed = out.finish(&report);
    if let Err(e) = &printed {
        eprintln!("smolvm-cleanup: cannot write the report to stdout: {e}");
    }
    let metrics = opts.metrics_file.as_deref().map(|path| {
        let t = report::RunTime {
            ended: discover::now_unix(),
            seconds: started.elapsed().as_secs_f64(),
        };
        let mut text = Vec::new();
        let written =
            report::write_metrics(&report, t, &mut text).and_then(|()| files::write_atomic(path, &text));
        if let Err(e) = &written {
            eprintln!("smolvm-cleanup: cannot write metrics to {}: {e}", path.display());
        }
        written
    });
    let failed_output = printed.is_err() || metrics.is_some_and(|m| m.is_err());
    let code = report.exit_code().max(u8::from(failed_output));
    if last_run(opts) {
        std::mem::forget(report);
    }
    code
}

/// A run that is the process's last (no `--every`) leaves what it read, planned and
/// reported to the exit, which frees it at once: one allocation at a time (a row, a link,
/// a rule: a few each) it costs milliseconds at N = 1000. With `--every`, each run frees
/// its own.
fn last_run(opts: &Options) -> bool {
    opts.every.is_none()
}

/// Why a run ends before its mode's work: it cannot see (a report saying so), or it
/// cannot start at all (a message on stderr).
enum Stop {
    Blind(Box<Report>),
    Fatal(String),
}

/// What a run sees and decides before it changes anything, and what it holds meanwhile.
struct Survey {
    found: discover::Discovery,
    plan: model::Plan,
    report: Report,
    timing: process::Timing,
    stop: &'static std::sync::atomic::AtomicBool,
    /// VMMs whose view of the host could not be read (`Inventory::uninspected`).
    uninspected: Vec<String>,
    _lock: lock::Held,
}

impl Survey {
    /// Closes the DBs as their drivers expect, then releases the lock; what was read and
    /// planned is freed, or, on the process's last run, left to the exit (`last_run`).
    fn release(mut self, opts: &Options) {
        drop(std::mem::take(&mut self.found.dbs));
        let Survey {
            found, plan, _lock, ..
        } = self;
        if last_run(opts) {
            std::mem::forget((found.obs, plan));
        }
        drop(_lock);
    }
}

/// `--dry-run` is this alone: locate, lock, discover, reconcile, plan, and the report.
fn survey(opts: &Options, mode: report::Mode, diag: &mut Diag) -> Result<Survey, Stop> {
    let timing = apply::timing(Instant::now(), opts.grace, opts.timeout);
    let mut laps = report::Laps::default();
    let proc_root = PathBuf::from("/proc");
    if let Some(why) = procfs::unusable(&proc_root) {
        return Err(Stop::Blind(Box::new(without_proc(opts, mode, why))));
    }
    let env = locate::Env::from_process();
    let dirs = locate::resolve(opts.db.as_deref(), opts.state_dir.as_deref(), &env);
    if let Some(why) = dirs.iter().find_map(locate::DataDir::unusable) {
        return Err(Stop::Fatal(why));
    }
    let limited = opts.db.is_some() || opts.state_dir.is_some() || !env.named.is_empty();
    let other_dirs = if limited {
        locate::others(&env, &dirs)
    } else {
        Vec::new()
    };
    if !other_dirs.is_empty() {
        let list: Vec<String> = other_dirs.iter().map(|d| d.dir.display().to_string()).collect();
        eprintln!(
            "smolvm-cleanup: the VMs of the other data dirs ({}) are theirs: their resources are not leftovers here",
            list.join(", ")
        );
    }
    let stop = signals::install().unwrap_or_else(|e| {
        diag.warn(format!(
            "cannot handle SIGINT/SIGTERM ({e}): a signal would end the run mid-step"
        ));
        signals::flag()
    });
    let read_only = mode != report::Mode::Clean;
    let postgres = postgres_source(opts, &env);
    // Its data dir holds those VMs' files even with no SQLite DB in it.
    let mut dirs = dirs;
    if let Some(src) = &postgres
        && src.dir.is_dir()
        && !dirs.iter().any(|d| d.dir == src.dir)
    {
        dirs.push(locate::DataDir::of(src.dir.clone(), false));
    }
    let cfg = discover::Config {
        data_dirs: &dirs,
        forwards_dirs: locate::forwards_dirs(&env),
        postgres,
        other_dirs: &other_dirs,
        owners: owners(&env),
        socket_dir: opts.socket_dir.clone(),
        read_only,
        deadline: timing.deadline,
        proc_root,
    };
    let mut found = discover::open(&cfg);
    laps.lap("locate");
    let held = take_lock(
        &found,
        &dirs,
        &opts.socket_dir,
        read_only,
        timing.deadline,
        stop,
        diag,
    )?;
    laps.lap("lock");
    let locks = discover::discover(&mut found, &cfg);
    laps.extend(&found.laps);
    if let Some(why) = found.fatal.take() {
        for w in &found.warnings {
            diag.warn(w.clone());
        }
        return Err(Stop::Blind(Box::new(blind(opts, mode, why))));
    }
    let selection = plan::Selection {
        all: opts.all,
        prefix: opts.prefix.clone(),
        min_age: opts.older_than.map(|d| d.as_secs_f64()),
        now: discover::now_unix(),
    };
    let (inv, plan) = judge(&mut found, &cfg, locks, &selection, &mut laps);
    announce(&found, &dirs, diag);
    explain(&inv, &plan, diag);
    let mut report = assemble(opts, mode, &found, &inv, &plan);
    laps.add("plan");
    report.phases = laps;
    Ok(Survey {
        found,
        plan,
        report,
        timing,
        stop,
        uninspected: inv.uninspected.clone(),
        _lock: held,
    })
}

/// Reconcile and plan, first while the claims are read, as if there were none (the usual
/// case, so the wait for them is mostly hidden), and again if there are.
fn judge(
    found: &mut discover::Discovery,
    cfg: &discover::Config<'_>,
    locks: procfs::Locks,
    selection: &plan::Selection,
    laps: &mut report::Laps,
) -> (model::Inventory, model::Plan) {
    let inv = reconcile::inventory(&found.obs);
    laps.lap("reconcile");
    let plan = plan::build(&inv, &found.obs, selection);
    laps.lap("plan");
    let judged = if discover::claims(found, cfg, locks) {
        let inv = reconcile::inventory(&found.obs);
        let plan = plan::build(&inv, &found.obs, selection);
        (inv, plan)
    } else {
        (inv, plan)
    };
    laps.lap("discover.claims");
    judged
}

/// SmolVM's state in PostgreSQL (`--database-url`, else `SMOLVM_DATABASE_URL` when it
/// names one), with the data dir its VMs' files are in.
fn postgres_source(opts: &Options, env: &locate::Env) -> Option<discover::PgSource> {
    let (url, whence) = match (&opts.database_url, &env.database_url) {
        (Some(url), _) => (url, "--database-url "),
        (None, Some(url)) => (url, "SMOLVM_DATABASE_URL="),
        (None, None) => return None,
    };
    let shown = locate::postgres(url)?;
    let dir = locate::smolvm_data_dir(opts.db.as_deref(), opts.state_dir.as_deref(), env)
        .unwrap_or_else(|| PathBuf::from("/var/lib/smolvm"));
    Some(discover::PgSource {
        url: url.clone(),
        shown,
        whence,
        dir,
        shared: !opts.database_is_local,
    })
}

/// The run's lock, keyed by the data dirs as discovery opened them (or, with none, the
/// socket dir): taken before anything is read, so a second run sees what the first one
/// left. Exclusive for a cleanup, shared for a dry run or a check.
fn take_lock(
    found: &discover::Discovery,
    dirs: &[locate::DataDir],
    socket_dir: &std::path::Path,
    read_only: bool,
    deadline: Instant,
    stop: &'static std::sync::atomic::AtomicBool,
    diag: &mut Diag,
) -> Result<lock::Held, Stop> {
    let mut places: Vec<&std::path::Path> = dirs
        .iter()
        .map(|d| d.dir.as_path())
        .filter(|d| found.roots.get(d).is_some())
        .collect();
    if places.is_empty() {
        places.push(socket_dir);
    }
    let mut keys = Vec::new();
    for dir in places {
        match found.roots.get(dir).map(rustix::fs::fstat) {
            Some(Ok(st)) => keys.push((dir.to_path_buf(), (st.st_dev, st.st_ino))),
            Some(Err(e)) => diag.warn(format!(
                "{}; running without the cleanup lock",
                error::Error::sys(format!("lock {}", dir.display()), e)
            )),
            None => {}
        }
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    let lock_dir = lock::dir_for(rustix::process::geteuid().as_raw(), runtime.as_deref());
    lock::acquire(&lock_dir, keys, !read_only, deadline, stop, &mut |m| diag.warn(m))
        .map_err(|e| Stop::Fatal(e.to_string()))
}

/// `--check`: the survey, and it also cannot vouch for what a listing failed to show.
fn check(opts: &Options, diag: &mut Diag) -> Result<Report, Stop> {
    let s = survey(opts, report::Mode::Check, diag)?;
    let mut report = s.report;
    // Asked to vouch for every VM, it cannot for a VMM whose view it could not read.
    if opts.all {
        report
            .incomplete
            .extend(s.uninspected.iter().map(|u| format!("not fully inspected: {u}")));
    }
    // A check vouches for nothing it could not list, whoever runs it.
    let failed = [s.found.link_error.as_ref(), s.found.nft_error.as_ref()];
    for e in failed.into_iter().flatten() {
        if !report.incomplete.contains(&e.to_string()) {
            report.incomplete.push(e.to_string());
        }
    }
    Ok(report)
}

/// The cleanup: the survey, its header printed before anything changes, then the plan
/// applied and, with `--all` and no VM left, SmolVM's shared tables removed.
fn clean(opts: &Options, diag: &mut Diag, out: &mut Out) -> Result<Report, Stop> {
    let mut s = survey(opts, report::Mode::Clean, diag)?;
    let mut report = std::mem::take(&mut s.report);
    let (found, plan) = (&s.found, &s.plan);
    let mut laps = std::mem::take(&mut report.phases);
    // With targets, the header goes out before anything changes. With none, it waits for
    // the end: the --all teardown may still fail, and then the header says so instead of
    // "No matching VMs to clean.".
    if !plan.targets.is_empty() {
        out.header(&report);
    }
    if !plan.targets.is_empty() {
        let mut warnings = Vec::new();
        let targets = &report.targets;
        let outcomes = apply::apply(
            plan,
            &mut apply::Env {
                procfs: &found.procfs,
                roots: &found.roots,
                dbs: &found.dbs,
                timing: s.timing,
                link_error: found.link_error.as_ref(),
                nft_error: found.nft_error.as_ref(),
                overlap: report.privilege == report::Privilege::Full,
                stop: s.stop,
                warn: &mut |m| warnings.push(m),
                on_step: &mut |i, step| diag.note(|| describe_step(&targets[i], step)),
                laps: &mut laps,
            },
        );
        report.outcomes = outcomes;
        for w in warnings {
            diag.warn(w);
        }
    }
    // With --all, a project's shared tables go once it has no VM left.
    let shared =
        opts.all && !found.obs.rows_incomplete && found.nft_error.is_none() && report.failures() == 0;
    for project in model::Project::ALL
        .into_iter()
        .filter(|p| shared && !plan.kept_projects.contains(p))
    {
        match apply::remove_shared(s.timing.deadline, project, plan::shared_teardown) {
            Ok(true) => eprintln!(
                "smolvm-cleanup: no {0} VM is left: removed {0}'s shared nftables tables",
                project.title()
            ),
            Ok(false) => {}
            Err(apply::Shared::Refused(e)) => diag.warn(format!("{e}; they are kept")),
            // --all asked for them and the kernel did not remove them: the run failed.
            Err(apply::Shared::Failed(e)) => report.incomplete.push(e.to_string()),
        }
    }
    if shared {
        laps.lap("apply.shared");
    }
    s.release(opts);
    report.phases = laps;
    Ok(report)
}

/// stderr: one line per data dir (the DB read, its DB's error, that it holds none and
/// the live system decides, or why it is refused), discovery's other warnings, and with
/// `-v` what was seen.
fn announce(found: &discover::Discovery, dirs: &[locate::DataDir], diag: &mut Diag) {
    // A refused dir's line, and a DB's error, are among the warnings.
    for dd in dirs.iter().filter(|dd| found.roots.get(&dd.dir).is_some()) {
        let mut any = false;
        for st in found
            .db_status
            .iter()
            .filter(|st| dd.dbs.iter().any(|(_, p)| st.path.as_ref() == Some(p)))
        {
            any = true;
            if st.error.is_none() {
                eprintln!("smolvm-cleanup: state DB: {} ({})", st.name, st.project.title());
            }
        }
        // Its rows are in PostgreSQL: said once, below.
        any |= found
            .obs
            .db_dirs
            .iter()
            .enumerate()
            .any(|(i, d)| *d == dd.dir && found.db_status.get(i).is_some_and(|st| st.path.is_none()));
        if !any {
            eprintln!(
                "smolvm-cleanup: no state DB found (in {}); reconciling from the live system",
                dd.dir.display()
            );
        }
    }
    for st in found.db_status.iter().filter(|st| st.path.is_none()) {
        eprintln!(
            "smolvm-cleanup: state DB: {} ({}, PostgreSQL at {}{})",
            st.name,
            st.project.title(),
            st.server.as_deref().unwrap_or("?"),
            if found.obs.shared_dbs.is_empty() {
                ", this host's alone"
            } else {
                ""
            }
        );
    }
    if dirs.is_empty() && found.db_status.is_empty() {
        eprintln!("smolvm-cleanup: no state DB found; reconciling from the live system");
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
}

/// stderr: reconcile's and plan's warnings, and with `-v` each VM's fate and the files
/// that nothing names.
fn explain(inv: &model::Inventory, plan: &model::Plan, diag: &mut Diag) {
    for w in inv.warnings.iter().chain(&plan.warnings) {
        diag.warn(w.clone());
    }
    if !inv.other_hosts.is_empty() {
        let n = inv.other_hosts.len();
        eprintln!(
            "smolvm-cleanup: {n} VM{} of the shared PostgreSQL state {} not this host's, or cannot be \
             told (nothing here names {}): left alone{}; if only this host uses that DB, \
             --database-is-local takes them",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" },
            if n == 1 { "it" } else { "them" },
            if diag.verbose { "" } else { " (-v lists them)" }
        );
        diag.note(|| format!("not this host's, or cannot tell: {}", inv.other_hosts.join(", ")));
    }
    if !diag.verbose {
        return;
    }
    let taken: std::collections::HashSet<&str> = plan.targets.iter().map(|t| t.id.as_str()).collect();
    for vm in &inv.vms {
        let why = vm
            .stale
            .as_ref()
            .map_or(String::new(), |s| format!(" (stale: {s})"));
        let what = if taken.contains(vm.id.as_str()) {
            "target"
        } else {
            "kept"
        };
        diag.note(|| format!("{}: {what}{why}", vm.id));
    }
    if !inv.unattributed.is_empty() {
        let files: Vec<String> = inv
            .unattributed
            .iter()
            .map(|f| f.path().display().to_string())
            .collect();
        diag.note(|| {
            format!(
                "not SmolVM's as far as anything shows (no row, rule, socket, lock or VMM names them), left alone: {}",
                files.join(", ")
            )
        });
    }
}

/// The report of what the survey found and decided, before anything is applied.
fn assemble(
    opts: &Options,
    mode: report::Mode,
    found: &discover::Discovery,
    inv: &model::Inventory,
    plan: &model::Plan,
) -> Report {
    let obs = &found.obs;
    // Only JSON, --check and --verbose show a target's resources.
    let detail = opts.json || opts.check || opts.verbose || opts.metrics_file.is_some();
    let privilege = privilege(&needed_caps(plan, obs));
    Report {
        mode,
        privilege: privilege.clone(),
        all: opts.all,
        prefix: opts.prefix.clone(),
        older_than_secs: opts.older_than.map(|d| d.as_secs_f64()),
        dbs: found
            .db_status
            .iter()
            .map(|st| (st.name.clone(), st.project.title(), st.error.clone()))
            .collect(),
        stale: plan.stale.clone(),
        targets: plan
            .targets
            .iter()
            .map(|t| Target {
                id: t.id.clone(),
                stale: t.stale.as_ref().map(ToString::to_string),
                has_row: !t.rows.is_empty(),
                resources: if detail {
                    Resources::of(t)
                } else {
                    Resources::default()
                },
            })
            .collect(),
        incomplete: incomplete(found, &privilege),
        unattributed: inv
            .unattributed
            .iter()
            .map(|f| f.path().display().to_string())
            .collect(),
        other_hosts: inv.other_hosts.clone(),
        ..Report::default()
    }
}

/// What the run could not see: state DBs not read and, for a run with the privileges it
/// needs, links or nft objects it could not list (no nf_tables, a sandbox that refuses
/// the netlink family). Without them, the first line already said cleanup may fail.
fn incomplete(found: &discover::Discovery, privilege: &report::Privilege) -> Vec<String> {
    let mut out = found.unread.clone();
    if *privilege == report::Privilege::Full {
        let failed = [found.link_error.as_ref(), found.nft_error.as_ref()];
        out.extend(failed.into_iter().flatten().map(ToString::to_string));
    }
    out
}

/// Without procfs every VMM would look gone and every running VM stale: nothing is judged
/// and nothing changed, and the report says what to do.
fn without_proc(opts: &Options, mode: report::Mode, why: String) -> Report {
    blind(
        opts,
        mode,
        format!(
            "{why}: without it no VMM can be told alive from gone, so nothing was looked at or \
             changed; mount it (mount -t proc proc /proc), or in a container share the host's \
             (docker run --pid=host; hostPID: true in Kubernetes)"
        ),
    )
}

/// The report of a run that could judge nothing, saying why.
fn blind(opts: &Options, mode: report::Mode, why: String) -> Report {
    Report {
        mode,
        privilege: privilege(&[]),
        all: opts.all,
        prefix: opts.prefix.clone(),
        older_than_secs: opts.older_than.map(|d| d.as_secs_f64()),
        incomplete: vec![why],
        ..Report::default()
    }
}

/// stdout, the one place a `Report` is printed (`report` formats it): the cleanup's header
/// goes out before anything changes, the rest once the run is over. A write that fails
/// (a full disk) does not stop the cleanup, but the run then exits 1; a closed pipe
/// (`| head`) is no failure.
struct Out {
    json: bool,
    header_done: bool,
    failed: Option<std::io::Error>,
}

impl Out {
    fn new(json: bool) -> Out {
        Out {
            json,
            header_done: false,
            failed: None,
        }
    }

    fn header(&mut self, r: &Report) {
        if self.json {
            return;
        }
        self.header_done = true;
        // Buffered (stdout is line-buffered: a thousand targets were a thousand writes),
        // and flushed before anything changes.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = report::write_header(r, &mut out).and_then(|()| out.flush());
        self.keep(written);
    }

    fn keep(&mut self, written: std::io::Result<()>) {
        match written {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                self.failed.get_or_insert(e);
            }
            _ => {}
        }
    }

    /// Err: stdout refused the report, now or when the header went out.
    fn finish(&mut self, r: &Report) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = if self.json {
            report::write_json(r, &mut out)
        } else if r.mode == report::Mode::Check {
            report::write_check(r, &mut out)
        } else if !self.header_done {
            report::write_header(r, &mut out)
        } else if r.mode == report::Mode::Clean && !r.targets.is_empty() {
            report::write_results(r, &mut out)
        } else {
            Ok(())
        };
        self.keep(written.and_then(|()| out.flush()));
        self.failed.take().map_or(Ok(()), Err)
    }
}

/// `vm-1: tap (tap3) removed`: a verbose line for one step of one target.
fn describe_step(t: &Target, s: &apply::Step) -> String {
    let r = &t.resources;
    let list = match s.kind {
        apply::StepKind::Process => r.vmm_pids.iter().map(|p| format!("pid {p}")).collect(),
        apply::StepKind::Tap => r.taps.clone(),
        apply::StepKind::Nft => {
            let mut v = vec![format!("{} rules", r.nft_rules + r.nft_tables.len())];
            if r.nft_elements > 0 {
                v.push(format!("{} elements", r.nft_elements));
            }
            v
        }
        apply::StepKind::Files => vec![format!("{} files", r.files.len())],
        apply::StepKind::Row => vec![format!("{} row{}", r.rows, if r.rows == 1 { "" } else { "s" })],
    };
    let what = if list.is_empty() {
        String::new()
    } else {
        format!(" ({})", list.join(", "))
    };
    let err = s.error.as_ref().map_or(String::new(), |e| format!(": {e}"));
    format!("{}: {}{what} {}{err}", t.id, s.kind.name(), s.state.name())
}
