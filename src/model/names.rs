//! SmolVM's and Celesto's name rules: the id, TAP and prefix patterns, which command
//! lines are VMMs and sidecars, the names of the files, sockets and claims each project
//! makes (and the data dir each names), and each project's table, comment and variable
//! names. Anything that fails these rules is hostile input: it is reported and never used
//! to build a path, a link name or an nft comment.

use std::path::PathBuf;

/// SmolVM's VM id pattern (0.0.5+): `^[a-z0-9][a-z0-9_-]{0,62}[a-z0-9]$|^[a-z0-9]$`.
pub fn valid_vm_id(id: &str) -> bool {
    let b = id.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: u8| edge(c) || c == b'_' || c == b'-';
    match b.len() {
        1 => edge(b[0]),
        2..=64 => edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| inner(c)),
        _ => false,
    }
}

/// TAP names SmolVM creates: `tap<N>` (N from its IP pool, up to 65534) and bridge-mode
/// `svmb<8 hex>`. `eth0`, `lo` or `../x` from a DB row are refused.
pub fn valid_tap_name(name: &str) -> bool {
    if let Some(n) = name.strip_prefix("tap") {
        return (1..=5).contains(&n.len())
            && n.bytes().all(|c| c.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'));
    }
    if let Some(h) = name.strip_prefix("svmb") {
        return h.len() == 8
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    }
    false
}

/// `firecracker` (possibly a path), a QEMU system emulator, or libkrun's `krunvm` CLI
/// (SmolVM 0.0.9-0.0.20).
pub fn is_vmm_argv0(argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    base == "firecracker" || base.starts_with("qemu-system-") || base == "qemu-kvm" || base == "krunvm"
}

/// A VMM's command name (`/proc/PID/stat`'s comm, at most 15 bytes): what is left to
/// tell one by once it is exiting and its command line is gone.
pub fn vmm_comm(comm: &str) -> bool {
    comm == "firecracker" || comm.starts_with("qemu-system-") || comm == "qemu-kvm" || comm == "krunvm"
}

/// The paths a VMM's or sidecar's command line names, as SmolVM passes them: whole
/// arguments, and the parts of `--api-sock=/p`, QEMU's `file=/p,format=raw`,
/// `unix:/p,server` and swtpm's `dir=/p`. Only compared, never opened.
pub fn argv_paths(cmdline: &[String]) -> impl Iterator<Item = &std::path::Path> {
    cmdline.iter().skip(1).flat_map(|a| a.split(',')).map(|token| {
        let token = token.rsplit('=').next().unwrap_or(token);
        std::path::Path::new(token.strip_prefix("unix:").unwrap_or(token))
    })
}

/// What a process is to a VM, by its command line alone (which VM is `reconcile`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the guest: Firecracker, QEMU, `krunvm`, or the libkrun launcher SmolVM 0.0.21+
    /// (and Celesto) start as `python -m <project>.runtime._libkrun_launcher <json>`.
    Vmm,
    /// Runs beside the guest and dies with it: the `swtpm` TPM of a QEMU Windows guest
    /// (0.0.16+), the `ssh` tunnel of a port forward (0.0.19+, found by its recorded pid).
    Sidecar,
}

/// The role a command line gives a process, if it is one SmolVM starts.
pub fn vm_role(cmdline: &[String]) -> Option<Role> {
    let argv0 = cmdline.first()?;
    if is_vmm_argv0(argv0) {
        return Some(Role::Vmm);
    }
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    if base == "swtpm" {
        return Some(Role::Sidecar);
    }
    let launcher = cmdline.windows(2).any(|w| {
        w[0] == "-m"
            && Project::ALL
                .iter()
                .any(|p| w[1] == format!("{}.runtime._libkrun_launcher", p.names().key))
    });
    (base.starts_with("python") && launcher).then_some(Role::Vmm)
}

/// `<id>.json`, `<id>.lock`, `<id>.operation.lock` in a forwards dir → id.
pub fn forward_file_id(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".operation.lock")
        .or_else(|| name.strip_suffix(".lock"))
        .or_else(|| name.strip_suffix(".json"))?;
    valid_vm_id(id).then_some(id)
}

/// `libkrun-<id>-<32 hex>.json` → id: the libkrun launcher's config (0.0.21+, in the
/// socket dir, never deleted by SmolVM).
pub fn libkrun_config_id(name: &str) -> Option<&str> {
    let stem = name.strip_prefix("libkrun-")?.strip_suffix(".json")?;
    let (id, hex) = stem.rsplit_once('-')?;
    let hex_ok = hex.len() == 32
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    (hex_ok && valid_vm_id(id)).then_some(id)
}

/// `<id>.ext4` / `<id>.qcow2` → id: a VM's disk in a data dir's `disks/`.
pub fn disk_id(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".ext4")
        .or_else(|| name.strip_suffix(".qcow2"))?;
    valid_vm_id(id).then_some(id)
}

/// The VM id an entry of a data dir carries by its name, by where it is (`sub`): `<id>.log`
/// (""), `disks/<id>.ext4|qcow2` and a disk's `<disk>.create-backup-<hex>` companion
/// (0.0.19+), `locks/<id>.create.lock|.snapshot.lock`, `firmware/<id>` and
/// `ssh-known-hosts/<id>.known_hosts`.
pub fn data_file_id<'a>(sub: &str, name: &'a str) -> Option<&'a str> {
    let id = match sub {
        "" => name.strip_suffix(".log"),
        "disks" => return disk_id(name.split_once(".create-backup-").map_or(name, |(disk, _)| disk)),
        "locks" => name
            .strip_suffix(".create.lock")
            .or_else(|| name.strip_suffix(".snapshot.lock")),
        "firmware" => Some(name),
        "ssh-known-hosts" => name.strip_suffix(".known_hosts"),
        _ => None,
    }?;
    valid_vm_id(id).then_some(id)
}

/// `172.16.0.2` as four bytes (a row's guest IP, a claim file's value); anything else is
/// None.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    s.parse::<std::net::Ipv4Addr>().ok().map(|ip| ip.octets())
}

/// The data dirs a VMM's command line names by SmolVM's layout: the `<dir>` of a disk
/// `<dir>/disks/<id>.ext4|qcow2` or of a path beneath `<dir>/firmware/<id>/`.
pub fn argv_homes(cmdline: &[String]) -> Vec<&std::path::Path> {
    let mut homes = Vec::new();
    for path in argv_paths(cmdline).filter(|p| p.is_absolute()) {
        let parent = path.parent();
        let disk = parent
            .filter(|d| d.file_name().is_some_and(|n| n == "disks"))
            .filter(|_| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(disk_id)
                    .is_some()
            })
            .and_then(|d| d.parent());
        let firmware = path
            .ancestors()
            .find(|a| {
                a.parent()
                    .and_then(|f| f.file_name())
                    .is_some_and(|n| n == "firmware")
                    && a.file_name().and_then(|n| n.to_str()).is_some_and(valid_vm_id)
            })
            .and_then(|a| a.parent()?.parent());
        for home in disk.into_iter().chain(firmware) {
            if !homes.contains(&home) {
                homes.push(home);
            }
        }
    }
    homes
}

/// The data dir of a VMM's log: SmolVM sends a VMM's stdout and stderr to
/// `<dir>/<id>.log`, so an absolute path of that form, for an id whose socket or launcher
/// config its command line names, is `<dir>` (any other `.log` is somebody else's).
pub fn log_home<'a>(target: &'a std::path::Path, cmdline: &[String]) -> Option<&'a std::path::Path> {
    // A log removed while the VMM runs still ties it: /proc shows `<dir>/<id>.log (deleted)`.
    let name = target.file_name()?.to_str()?;
    let id = name
        .strip_suffix(" (deleted)")
        .unwrap_or(name)
        .strip_suffix(".log")?;
    let named = argv_paths(cmdline)
        .filter_map(|p| p.file_name()?.to_str())
        .any(|n| socket_id(n).or_else(|| libkrun_config_id(n)) == Some(id));
    (target.is_absolute() && named && valid_vm_id(id))
        .then(|| target.parent())
        .flatten()
}

/// The data dir and name of a claim file, `<dir>/locks/resources/<kind>-<value>.lock`
/// with kind `tap`, `ip`, `ssh` or `vsock` (SmolVM 0.0.30+, Celesto).
pub fn claim_home(target: &std::path::Path) -> Option<(&std::path::Path, &str)> {
    let name = target.file_name()?.to_str()?;
    let (kind, value) = name.strip_suffix(".lock")?.split_once('-')?;
    if !matches!(kind, "tap" | "ip" | "ssh" | "vsock") || value.is_empty() || !target.is_absolute() {
        return None;
    }
    let resources = target.parent()?;
    let locks = resources.parent()?;
    let named = |p: &std::path::Path, n: &str| p.file_name().is_some_and(|f| f == n);
    (named(resources, "resources") && named(locks, "locks"))
        .then(|| Some((locks.parent()?, name)))
        .flatten()
}

/// The data dirs a process's environment (`/proc/PID/environ`) names: `CELESTO_DATA_DIR`
/// and `SMOLVM_DATA_DIR`, absolute values only (a relative one is relative to a cwd we
/// do not know).
pub fn env_homes(environ: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut homes: Vec<PathBuf> = Vec::new();
    for var in environ.split(|&b| b == 0) {
        let value = Project::ALL.iter().find_map(|p| {
            var.strip_prefix(p.names().data_dir_var.as_bytes())?
                .strip_prefix(b"=")
        });
        if let Some(v) = value.filter(|v| v.first() == Some(&b'/')) {
            let dir = PathBuf::from(std::ffi::OsStr::from_bytes(v));
            if !homes.contains(&dir) {
                homes.push(dir);
            }
        }
    }
    homes
}

/// `fc-<id>.sock` → id, for the socket names SmolVM uses.
pub fn socket_id(name: &str) -> Option<&str> {
    ["fc-", "qmp-", "vsock-"].iter().find_map(|p| {
        let id = name.strip_prefix(p)?.strip_suffix(".sock")?;
        valid_vm_id(id).then_some(id)
    })
}

pub const NFPROTO_INET: u8 = 1;

pub const NFPROTO_IPV4: u8 = 2;

/// The names SmolVM's code has shipped under: SmolVM (PyPI `smolvm` 0.0.x) and its
/// successor Celesto (PyPI `celesto` 0.1.x: the same code, its host state renamed).
/// Both draw from one TAP/IP pool and one socket namespace; everything else cleanup
/// matches by name comes from `Names`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Project {
    #[default]
    SmolVM,
    Celesto,
}

/// One project's names for its host state.
#[derive(Debug)]
pub struct Names {
    /// As users read it: `SmolVM`, `Celesto`.
    pub title: &'static str,
    /// The directory name of its data dirs (`/var/lib/<key>`, `$XDG_STATE_HOME/<key>`).
    pub key: &'static str,
    /// The variable that names its data dir.
    pub data_dir_var: &'static str,
    pub db_file: &'static str,
    /// Its shared tables: `ip <nat>` and `inet <filter>`.
    pub nat: &'static str,
    pub filter: &'static str,
    /// `inet <policy><tap>`, one per TAP (SmolVM 0.0.32+).
    pub policy: &'static str,
    /// Its rule comments start with this.
    pub comment: &'static str,
    /// A bridge TAP's ifalias: `<bridge_alias><id>`.
    pub bridge_alias: &'static str,
}

const SMOLVM_NAMES: Names = Names {
    title: "SmolVM",
    key: "smolvm",
    data_dir_var: "SMOLVM_DATA_DIR",
    db_file: "smolvm.db",
    nat: "smolvm_nat",
    filter: "smolvm_filter",
    policy: "smolvm_policy_",
    comment: "smolvm:",
    bridge_alias: "smolvm-bridge:",
};

const CELESTO_NAMES: Names = Names {
    title: "Celesto",
    key: "celesto",
    data_dir_var: "CELESTO_DATA_DIR",
    db_file: "celesto.db",
    nat: "celesto_nat",
    filter: "celesto_filter",
    policy: "celesto_policy_",
    comment: "celesto:",
    bridge_alias: "celesto-bridge:",
};

impl Project {
    pub const ALL: [Project; 2] = [Project::SmolVM, Project::Celesto];

    pub fn names(self) -> &'static Names {
        match self {
            Project::SmolVM => &SMOLVM_NAMES,
            Project::Celesto => &CELESTO_NAMES,
        }
    }

    pub fn title(self) -> &'static str {
        self.names().title
    }

    /// Its two shared tables, (nfproto, name): its per-VM rules live only there.
    pub fn shared_tables(self) -> [(u8, &'static str); 2] {
        let n = self.names();
        [(NFPROTO_IPV4, n.nat), (NFPROTO_INET, n.filter)]
    }

    /// Whose shared table this is.
    pub fn of_shared_table(nfproto: u8, table: &str) -> Option<Project> {
        Project::ALL
            .into_iter()
            .find(|p| p.shared_tables().contains(&(nfproto, table)))
    }

    /// Whose per-TAP policy table this is, and the TAP it names.
    pub fn of_policy_table(nfproto: u8, table: &str) -> Option<(Project, &str)> {
        if nfproto != NFPROTO_INET {
            return None;
        }
        Project::ALL
            .into_iter()
            .find_map(|p| Some((p, table.strip_prefix(p.names().policy)?)))
    }

    /// Whose DB a file named `name` is (`celesto.db`; anything else is SmolVM's, the name
    /// `--db` has always been given).
    pub fn of_db_file(name: &str) -> Project {
        if name.starts_with(CELESTO_NAMES.key) {
            Project::Celesto
        } else {
            Project::SmolVM
        }
    }
}

/// The maps and sets SmolVM (0.0.8+) keeps in its two shared tables (Celesto's too).
pub const SHARED_SETS: [&str; 5] = [
    "dnat_ext",
    "dnat_local",
    "snat_return",
    "fwd_allow",
    "allowed_taps",
];

/// A `--prefix` must be something a valid id can start with.
pub fn valid_prefix(prefix: &str) -> bool {
    let b = prefix.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_names_a_data_dir() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-drive",
            "file=/ci/b/disks/vm-1.qcow2,if=virtio",
            "-chardev",
            "socket,path=/ci/b/firmware/vm-1/swtpm/swtpm-sock",
            "-qmp",
            "unix:/tmp/qmp-vm-1.sock,server=on,wait=off",
            "-kernel",
            "/images/disks/vmlinux",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(argv_homes(&argv), [std::path::Path::new("/ci/b")]);
        let fc: Vec<String> = ["firecracker", "--api-sock", "/tmp/fc-vm-1.sock"]
            .map(String::from)
            .to_vec();
        assert!(argv_homes(&fc).is_empty());
        let p = std::path::Path::new;
        assert_eq!(log_home(p("/ci/b/vm-1.log"), &fc), Some(p("/ci/b")));
        assert_eq!(log_home(p("/ci/b/vm-2.log"), &fc), None, "another id's log");
        assert_eq!(log_home(p("/ci/b/vm-1.log (deleted)"), &fc), Some(p("/ci/b")));
        assert_eq!(log_home(p("/tmp/ci-output.log"), &fc), None);
        assert_eq!(log_home(p("/dev/null"), &fc), None);
        assert_eq!(log_home(p("rel/vm-1.log"), &fc), None);
        assert_eq!(
            claim_home(p("/ci/b/locks/resources/tap-tap3.lock")),
            Some((p("/ci/b"), "tap-tap3.lock"))
        );
        assert_eq!(claim_home(p("/ci/b/locks/vm-1.create.lock")), None);
        assert_eq!(claim_home(p("/ci/b/other/resources/ip-1.2.3.4.lock")), None);
        assert_eq!(claim_home(p("/ci/b/locks/resources/disk-x.lock")), None);
        let env = b"HOME=/root\0SMOLVM_DATA_DIR=/ci/b\0CELESTO_DATA_DIR=rel\0SMOLVM_DATA_DIRX=/no\0";
        assert_eq!(env_homes(env), [PathBuf::from("/ci/b")]);
        assert_eq!(parse_ipv4("172.16.0.7"), Some([172, 16, 0, 7]));
        assert_eq!(parse_ipv4("172.16.0"), None);
    }

    #[test]
    fn vm_ids() {
        for ok in ["vm-0a1b2c3d", "web-server", "a", "sbx-tesla", "x_1", "0"] {
            assert!(valid_vm_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "vm/../x",
            "vm 1",
            "vm.1",
            &"a".repeat(65),
            "é",
        ] {
            assert!(!valid_vm_id(bad), "{bad}");
        }
        assert!(valid_vm_id(&"a".repeat(64)));
    }

    #[test]
    fn tap_names() {
        for ok in ["tap2", "tap254", "tap65534", "tap0", "svmb0a1b2c3d"] {
            assert!(valid_tap_name(ok), "{ok}");
        }
        for bad in [
            "eth0",
            "lo",
            "../x",
            "tap",
            "tap02",
            "tap123456",
            "tap1 ",
            "svmb0A1B2C3D",
            "svmb123",
            "tapx",
        ] {
            assert!(!valid_tap_name(bad), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("vm-"));
        assert!(valid_prefix("sbx"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("-x"));
        assert!(!valid_prefix("VM"));
        assert!(!valid_prefix("vm/"));
    }

    #[test]
    fn roles_and_libkrun_configs() {
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            vm_role(&cmd(&[
                "/usr/bin/krunvm",
                "run",
                "--rootfs",
                "/d/disks/vm-1.ext4"
            ])),
            Some(Role::Vmm)
        );
        let launcher = cmd(&[
            "/v/bin/python3",
            "-m",
            "celesto.runtime._libkrun_launcher",
            "/tmp/x.json",
        ]);
        assert_eq!(vm_role(&launcher), Some(Role::Vmm));
        let other = cmd(&["/v/bin/python3", "-m", "mytool.runtime._libkrun_launcher"]);
        assert_eq!(vm_role(&other), None);
        assert_eq!(vm_role(&cmd(&["/usr/bin/swtpm", "socket"])), Some(Role::Sidecar));
        assert_eq!(vm_role(&cmd(&["sleep", "1"])), None);
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            libkrun_config_id(&format!("libkrun-sbx-a-b-{hex}.json")),
            Some("sbx-a-b")
        );
        assert_eq!(libkrun_config_id("libkrun-sbx-a-0123.json"), None);
        assert_eq!(libkrun_config_id(&format!("libkrun-../x-{hex}.json")), None);
    }

    #[test]
    fn vmm_names() {
        assert!(is_vmm_argv0("firecracker"));
        assert!(is_vmm_argv0("/usr/local/bin/firecracker"));
        assert!(is_vmm_argv0("qemu-system-x86_64"));
        assert!(!is_vmm_argv0("firecracker-helper"));
        assert!(!is_vmm_argv0("sleep"));
    }
}
