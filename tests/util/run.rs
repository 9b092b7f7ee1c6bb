//! Running the binary: the one place a `Command` for it is made, what a finished run
//! printed, and the first lines the contract prescribes.

use std::path::Path;
use std::process::{Child, Command, Output};

use super::world::World;

pub const BIN: &str = env!("CARGO_BIN_EXE_smolvm-cleanup");

/// The contract's first line for a user who is not root.
pub const NOT_ROOT: &str = "Warning: not running as root. Cleanup may fail for TAP/nftables resources.";

/// The first line for root without CAP_NET_ADMIN: which capability, and how to grant it.
pub const NO_NET_ADMIN: &str = "Warning: running as root without CAP_NET_ADMIN. Cleanup may fail for \
    TAP/nftables resources; grant it (docker run --cap-add NET_ADMIN, or \
    securityContext.capabilities.add: [\"NET_ADMIN\"] in Kubernetes).";

/// The binary, run through `wrapper` when one is given (`setpriv …`, `unshare …`), with
/// no state location inherited from the environment: a test says where its state is.
pub fn bin_via(wrapper: &[&str]) -> Command {
    let mut c = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    c.env_remove("SMOLVM_DATA_DIR")
        .env_remove("CELESTO_DATA_DIR")
        .env_remove("SMOLVM_DATABASE_URL")
        .env_remove("SUDO_USER");
    c
}

pub fn bin() -> Command {
    bin_via(&[])
}

/// The binary with no data dir named, for state under `scratch` at `state/smolvm`: it finds
/// it the way SmolVM would (`$XDG_STATE_HOME/smolvm`), in a mount namespace whose /var/lib
/// is an empty tmpfs, so the host's own /var/lib/smolvm is never looked at.
pub fn bin_found(scratch: &Path, sock: &Path) -> Command {
    let script = "mount -t tmpfs tmpfs /var/lib && exec \"$0\" \"$@\"";
    let mut c = bin_via(&[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
    ]);
    c.arg("--socket-dir")
        .arg(sock)
        .env("HOME", scratch.join("home"))
        .env("XDG_STATE_HOME", scratch.join("state"));
    c
}

impl World {
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_via(&[], args)
    }

    /// The binary run through `wrapper` (e.g. `setpriv --bounding-set=-net_admin`).
    pub fn cmd_via(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut c = bin_via(wrapper);
        c.arg("--state-dir")
            .arg(&self.data)
            .arg("--socket-dir")
            .arg(&self.sock)
            .args(args)
            .env("HOME", &self.scratch.0);
        c
    }

    /// The binary with no data dir named: it finds this world's the way SmolVM would.
    pub fn run_found(&self, args: &[&str]) -> Run {
        let out = bin_found(&self.scratch.0, &self.sock).args(args).output();
        Run::from(out.expect("run smolvm-cleanup"))
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("run smolvm-cleanup"))
    }
}

/// A finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn expect(&self, code: i32, stdout: &str) {
        if self.code != code || self.stdout != stdout {
            panic!(
                "\n--- expected (exit {code}) ---\n{stdout}--- got (exit {}) ---\n{}--- stderr ---\n{}",
                self.code, self.stdout, self.stderr
            );
        }
    }
}

/// A spawned child that is killed and reaped when the test ends, however it ends (a
/// failed assertion must not leave a `--every` loop running).
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
