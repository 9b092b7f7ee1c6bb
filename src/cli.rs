//! Command line: `smolvm-cleanup [OPTIONS]`, or `smolvm cleanup [OPTIONS]` when started as
//! `smolvm` (argv[0]). Parsing only validates what the user typed; `--help` and
//! `--version` are returned as values and `main` decides what to print and the exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;

use crate::model::valid_prefix;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub all: bool,
    pub prefix: String,
    pub dry_run: bool,
    pub state_dir: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub socket_dir: PathBuf,
    pub grace: Duration,
    pub timeout: Duration,
    pub json: bool,
    pub check: bool,
    pub older_than: Option<Duration>,
    pub verbose: bool,
    /// Run again every this long until SIGTERM/SIGINT (a DaemonSet's way to be periodic).
    pub every: Option<Duration>,
    /// Prometheus text for node_exporter's textfile collector, rewritten after each run.
    pub metrics_file: Option<PathBuf>,
    /// The PostgreSQL URL SmolVM 0.0.8-0.0.29 was given (`SMOLVM_DATABASE_URL`).
    pub database_url: Option<String>,
    /// Only this host uses that PostgreSQL DB: a row nothing here names is this host's
    /// stale leftover, not another host's VM.
    pub database_is_local: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            all: false,
            prefix: "vm-".to_string(),
            dry_run: false,
            state_dir: None,
            db: None,
            socket_dir: PathBuf::from("/tmp"),
            grace: Duration::from_secs(3),
            timeout: Duration::from_secs(60),
            json: false,
            check: false,
            older_than: None,
            verbose: false,
            every: None,
            metrics_file: None,
            database_url: None,
            database_is_local: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Run(Box<Options>),
    Help(Mode),
    Version,
}

/// Which program argv[0] made us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `smolvm-cleanup …`
    Cleanup,
    /// `smolvm cleanup …`
    SmolvmCleanup,
    /// `smolvm` itself (`smolvm --help`).
    Smolvm,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageError {
    pub message: String,
    pub mode: Mode,
}

impl Mode {
    pub fn from_argv0(argv0: &str) -> Mode {
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        if base == "smolvm" {
            Mode::Smolvm
        } else {
            Mode::Cleanup
        }
    }

    pub fn usage(self) -> &'static str {
        match self {
            Mode::Cleanup => "usage: smolvm-cleanup [--all] [--prefix PREFIX] [--dry-run] [OPTIONS]",
            Mode::SmolvmCleanup => "usage: smolvm cleanup [--all] [--prefix PREFIX] [--dry-run] [OPTIONS]",
            Mode::Smolvm => "usage: smolvm cleanup [--all] [--prefix PREFIX] [--dry-run] [OPTIONS]",
        }
    }

    pub fn help(self) -> String {
        match self {
            Mode::Smolvm => format!(
                "{}\n\nCommands:\n  cleanup    Clean stale SmolVM resources\n\nThis binary provides only \
                 the cleanup command; see `smolvm cleanup --help`.\n",
                self.usage()
            ),
            _ => format!("{}\n\n{HELP}", self.usage()),
        }
    }
}

const HELP: &str = "\
Reclaims what SmolVM (and Celesto, its successor) microVMs leave on a host: the VMM
process, the TAP device, the nftables rules, the API socket, log and isolated disk copy,
and finally the state row.

Targets: stale VMs (a running/paused/error row whose VMM is gone, a zombie or a reused
pid) and VMs whose id starts with PREFIX; `created`/`stopped` VMs with other ids are kept.

Options:
      --all              Target every VM in the state DB (ignores --prefix) [default: off]
      --prefix PREFIX    Target VMs whose id starts with PREFIX [default: vm-]
      --dry-run          Print the targets and change nothing, the DB included [default: off]
      --state-dir DIR    Use DIR's smolvm.db and celesto.db only [default: $SMOLVM_DATA_DIR
                         and $CELESTO_DATA_DIR, else every SmolVM and Celesto data dir
                         that holds a DB]
      --db PATH          Use this state DB file only (its directory is the data dir)
      --socket-dir DIR   Where SmolVM puts fc-<id>.sock [default: /tmp]
      --database-url URL The PostgreSQL URL SmolVM 0.0.8-0.0.29 keeps its state in
                         (libpq's rules: PGPASSWORD, ~/.pgpass, PGHOST, sslmode, …). A
                         row there is this host's only when something here names its
                         VM; other rows are left alone [default: $SMOLVM_DATABASE_URL]
      --database-is-local
                         Only this host uses that DB: rows nothing here names are this
                         host's stale leftovers, and go [default: off]
      --older-than DURATION
                         Leave VMs whose state row was created less than DURATION ago
                         alone, stale or not [default: off]
      --check            Change nothing; exit 1 if anything cleanup would target is left
                         (a leak check for CI post-steps) [default: off]
      --json             Print one JSON document on stdout instead of the text [default: off]
  -v, --verbose          Report each step on stderr as it happens [default: off]
      --every DURATION   Run again every DURATION until SIGTERM, for hosts where the
                         scheduler is a long-lived container (a DaemonSet) [default: once]
      --metrics-file PATH
                         After each run, write Prometheus text there (atomically) for
                         node_exporter's textfile collector [default: off]
      --grace DURATION   Time a VMM gets after SIGTERM before SIGKILL [default: 3s]
      --timeout DURATION Bound on the whole run, DB and netlink waits included [default: 60s]
  -h, --help             Print this help
  -V, --version          Print version and commit

DURATION is a number with an optional unit: ms, s, m, h (e.g. 500ms, 3s, 2m).
NO_COLOR (or a stderr that is not a terminal) turns off the colour of warnings.

Exit status:
  0  every target was cleaned, or there was nothing to do (also for --dry-run);
     with --check: nothing is left
  1  at least one target failed (its state row is kept), the run could not see
     everything (a state DB not read, no /proc, rules it could not list), or it could
     not start; with --check: something is left, or the host could not be fully inspected
  2  bad usage
";

/// Parses `args` (without argv[0]) for the program named by `mode`.
pub fn parse(mode: Mode, args: impl IntoIterator<Item = OsString>) -> Result<Action, UsageError> {
    let mut parser = lexopt::Parser::from_args(args);
    let mode = if mode == Mode::Smolvm {
        let err = |message: String| UsageError {
            message,
            mode: Mode::Smolvm,
        };
        match parser.next().map_err(|e| err(e.to_string()))? {
            Some(Value(cmd)) if cmd == "cleanup" => Mode::SmolvmCleanup,
            Some(Value(cmd)) => {
                return Err(err(format!(
                    "unknown command '{}': this binary only provides 'cleanup'",
                    cmd.to_string_lossy()
                )));
            }
            Some(Short('h') | Long("help")) => return Ok(Action::Help(Mode::Smolvm)),
            Some(Short('V') | Long("version")) => return Ok(Action::Version),
            Some(other) => return Err(err(other.unexpected().to_string())),
            None => return Err(err("missing command (only 'cleanup' is provided)".into())),
        }
    } else {
        mode
    };
    parse_cleanup(mode, parser).map_err(|message| UsageError { message, mode })
}

fn parse_cleanup(mode: Mode, mut parser: lexopt::Parser) -> Result<Action, String> {
    let mut o = Options::default();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("all") => o.all = true,
            Long("dry-run") => o.dry_run = true,
            Long("prefix") => {
                let p = parser
                    .value()
                    .and_then(|v| v.string())
                    .map_err(|e| e.to_string())?;
                if !valid_prefix(&p) {
                    return Err(format!(
                        "invalid --prefix {p:?}: it must be the start of a SmolVM id ([a-z0-9][a-z0-9_-]*)"
                    ));
                }
                o.prefix = p;
            }
            Long("state-dir") => o.state_dir = Some(path_value(&mut parser, "--state-dir")?),
            Long("db") => o.db = Some(path_value(&mut parser, "--db")?),
            Long("socket-dir") => o.socket_dir = path_value(&mut parser, "--socket-dir")?,
            Long("grace") => o.grace = duration_value(&mut parser, "--grace")?,
            Long("older-than") => o.older_than = Some(duration_value(&mut parser, "--older-than")?),
            Long("check") => o.check = true,
            Long("every") => o.every = Some(duration_value(&mut parser, "--every")?),
            Long("metrics-file") => o.metrics_file = Some(path_value(&mut parser, "--metrics-file")?),
            Long("database-url") => {
                let v = parser
                    .value()
                    .and_then(|v| v.string())
                    .map_err(|e| e.to_string())?;
                // SmolVM's own test; anything else it would not have used.
                if !(v.starts_with("postgresql") || v.starts_with("postgres://")) {
                    return Err("--database-url takes a postgresql:// or postgres:// URL".to_string());
                }
                o.database_url = Some(v);
            }
            Long("database-is-local") => o.database_is_local = true,
            Long("json") => o.json = true,
            Short('v') | Long("verbose") => o.verbose = true,
            Long("timeout") => o.timeout = duration_value(&mut parser, "--timeout")?,
            Short('h') | Long("help") => return Ok(Action::Help(mode)),
            Short('V') | Long("version") => return Ok(Action::Version),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if o.timeout.is_zero() {
        return Err("--timeout must be more than 0".into());
    }
    if o.every.is_some_and(|e| e.is_zero()) {
        return Err("--every must be more than 0".into());
    }
    Ok(Action::Run(Box::new(o)))
}

fn path_value(parser: &mut lexopt::Parser, flag: &str) -> Result<PathBuf, String> {
    let v: PathBuf = parser.value().map_err(|e| e.to_string())?.into();
    if v.as_os_str().is_empty() {
        return Err(format!("{flag} needs a non-empty path"));
    }
    Ok(v)
}

fn duration_value(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
    let v = parser
        .value()
        .and_then(|v| v.string())
        .map_err(|e| e.to_string())?;
    parse_duration(&v).ok_or_else(|| format!("invalid {flag} {v:?}: expected e.g. 500ms, 3s, 2m, 1h"))
}

/// `500ms`, `3`, `3s`, `2.5s`, `10m`, `2h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let secs = n * scale;
    (secs.is_finite() && (0.0..=1.0e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, args: &[&str]) -> Result<Action, UsageError> {
        parse(mode, args.iter().map(OsString::from))
    }

    fn opts(args: &[&str]) -> Options {
        match run(Mode::Cleanup, args) {
            Ok(Action::Run(o)) => *o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags() {
        assert_eq!(opts(&[]), Options::default());
        let o = opts(&["--check", "--json", "-v", "--older-than", "10m"]);
        assert!(o.check && o.json && o.verbose);
        assert_eq!(o.older_than, Some(Duration::from_secs(600)));
        let o = opts(&[
            "--all",
            "--prefix",
            "sbx-",
            "--dry-run",
            "--grace=500ms",
            "--timeout",
            "2m",
        ]);
        assert!(o.all && o.dry_run);
        assert_eq!(o.prefix, "sbx-");
        assert_eq!(o.grace, Duration::from_millis(500));
        assert_eq!(o.timeout, Duration::from_secs(120));
        assert_eq!(opts(&["--prefix=test"]).prefix, "test");
        assert_eq!(opts(&["--state-dir", "/d"]).state_dir, Some(PathBuf::from("/d")));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["--prefix", ""][..],
            &["--prefix", "VM"],
            &["--prefix"],
            &["--bogus"],
            &["extra"],
            &["--grace", "soon"],
            &["--timeout", "0"],
            &["--state-dir", ""],
            &["--database-url", "mysql://db/smolvm"],
            &["--database-url", "host=db password=x"],
        ] {
            assert!(run(Mode::Cleanup, bad).is_err(), "{bad:?}");
        }
        let e = run(Mode::Cleanup, &["--database-url", "host=db password=s3cret"]).unwrap_err();
        assert!(!e.message.contains("s3cret"), "{}", e.message);
        let e = run(Mode::Cleanup, &["--prefix", ""]).unwrap_err();
        assert!(e.message.contains("--prefix"), "{}", e.message);
    }

    #[test]
    fn help_and_version_are_values() {
        assert_eq!(run(Mode::Cleanup, &["-h"]), Ok(Action::Help(Mode::Cleanup)));
        assert_eq!(run(Mode::Cleanup, &["--all", "--version"]), Ok(Action::Version));
        assert!(Mode::Cleanup.help().contains("[default: vm-]"));
    }

    #[test]
    fn smolvm_dispatch() {
        assert_eq!(Mode::from_argv0("/usr/bin/smolvm"), Mode::Smolvm);
        assert_eq!(Mode::from_argv0("smolvm-cleanup"), Mode::Cleanup);
        match run(Mode::Smolvm, &["cleanup", "--dry-run"]) {
            Ok(Action::Run(o)) => assert!(o.dry_run),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            run(Mode::Smolvm, &["cleanup", "--help"]),
            Ok(Action::Help(Mode::SmolvmCleanup))
        );
        assert_eq!(run(Mode::Smolvm, &["--help"]), Ok(Action::Help(Mode::Smolvm)));
        let e = run(Mode::Smolvm, &["list"]).unwrap_err();
        assert!(e.message.contains("only provides 'cleanup'"));
        assert!(run(Mode::Smolvm, &[]).is_err());
        let e = run(Mode::Smolvm, &["cleanup", "--bogus"]).unwrap_err();
        assert_eq!(e.mode, Mode::SmolvmCleanup);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2.5s"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration(""), None);
    }
}
