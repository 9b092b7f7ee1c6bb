//! The state real SmolVM and Celesto releases wrote (`tests/fixtures/<project>-<version>`,
//! from the shared fixtures): each DB as is, its links and nft ruleset rebuilt from the
//! dumps, its files from the listing (`/var/lib/smolvm` and `/var/lib/celesto` become the
//! data dirs `state/smolvm` and `state/celesto`, found as SmolVM and Celesto find them
//! with `XDG_STATE_HOME=<scratch>/state`; `/tmp` the socket dir).

use std::path::{Path, PathBuf};

use crate::util::{Run, Scratch, bin, comments, enter_netns, fake_vmm, links, nft, ruleset, sh};

/// A SmolVM host rebuilt from a fixture inside this test's network namespace.
struct Host {
    scratch: Scratch,
    /// SmolVM's data dir (`/var/lib/smolvm` in the fixture).
    data: PathBuf,
    /// Celesto's (`/var/lib/celesto`).
    cdata: PathBuf,
    sock: PathBuf,
}

impl Host {
    fn load(version: &str) -> Option<Host> {
        if !enter_netns() {
            return None;
        }
        let fx = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(version);
        let scratch = Scratch::new(version);
        // Where SmolVM's own resolution finds it with XDG_STATE_HOME=<scratch>/state.
        let data = scratch.0.join("state/smolvm");
        let cdata = scratch.0.join("state/celesto");
        let sock = scratch.0.join("sock");
        std::fs::create_dir_all(data.join("disks")).unwrap();
        std::fs::create_dir_all(&sock).unwrap();
        for (dir, db) in [(&data, "smolvm.db"), (&cdata, "celesto.db")] {
            if fx.join(db).exists() {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(dir.join(db), std::fs::read(fx.join(db)).unwrap()).unwrap();
            }
        }
        for line in std::fs::read_to_string(fx.join("files.txt")).unwrap().lines() {
            let path = if let Some(rel) = line.strip_prefix("/var/lib/smolvm/") {
                data.join(rel)
            } else if let Some(rel) = line.strip_prefix("/var/lib/celesto/") {
                cdata.join(rel)
            } else if let Some(rel) = line.strip_prefix("/tmp/") {
                sock.join(rel)
            } else {
                continue;
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            if path.extension().is_some_and(|e| e == "sock") {
                // What a VMM that is gone leaves: a socket nobody serves.
                drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            } else if path.extension().is_some_and(|e| e == "db") {
                // Copied above, as the project wrote it.
            } else if path.extension().is_some() {
                std::fs::write(&path, line).unwrap();
            } else {
                std::fs::create_dir_all(&path).unwrap();
            }
        }
        // Links from `ip -d link show`: TAPs ("tun type tap", with their alias), the uplink,
        // and for bridge mode the bridge and its port.
        sh("ip link add uplink0 type veth peer name uplink0p && ip link set uplink0 up");
        let dump = std::fs::read_to_string(fx.join("ip-link.txt")).unwrap();
        if dump.contains(": br0:") {
            sh(
                "ip link add br0 type bridge && ip link add eth1 type veth peer name eth1p && ip link set eth1 master br0",
            );
        }
        let mut name = String::new();
        for line in dump.lines() {
            if let Some(rest) = line.split(": ").nth(1).filter(|_| !line.starts_with(' ')) {
                name = rest.split('@').next().unwrap().to_string();
            } else if line.trim_start().starts_with("tun type tap") {
                sh(&format!("ip tuntap add {name} mode tap && ip link set {name} up"));
            } else if let Some(alias) = line.trim_start().strip_prefix("alias ") {
                sh(&format!("ip link set {name} alias {alias}"));
            }
        }
        nft(&std::fs::read_to_string(fx.join("nft-ruleset.txt")).unwrap());
        Some(Host {
            scratch,
            data,
            cdata,
            sock,
        })
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(
            bin()
                .arg("--state-dir")
                .arg(&self.data)
                .arg("--socket-dir")
                .arg(&self.sock)
                .args(args)
                .env("HOME", &self.scratch.0)
                .output()
                .unwrap(),
        )
    }

    /// The binary with no data dir named, as `World::run_found` runs it.
    fn run_found(&self, args: &[&str]) -> Run {
        Run::from(
            crate::util::bin_found(&self.scratch.0, &self.sock)
                .args(args)
                .output()
                .unwrap(),
        )
    }

    fn rows(&self, sql: &str) -> Vec<String> {
        rows_of(&self.data.join("smolvm.db"), sql)
    }

    /// Rows of Celesto's DB.
    fn crows(&self, sql: &str) -> Vec<String> {
        rows_of(&self.cdata.join("celesto.db"), sql)
    }

    /// Files under the data and socket dirs, relative to the scratch dir, sorted.
    fn files(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.scratch.0, &self.scratch.0, &mut out);
        // The data dirs sit at state/smolvm and state/celesto: named data and cdata.
        let mut out: Vec<String> = out
            .into_iter()
            .filter(|f| f != "state")
            .map(|f| {
                let smolvm = f.strip_prefix("state/smolvm").map(|r| format!("data{r}"));
                let celesto = f.strip_prefix("state/celesto").map(|r| format!("cdata{r}"));
                smolvm.or(celesto).unwrap_or(f)
            })
            .collect();
        out.sort();
        out
    }
}

fn rows_of(db: &Path, sql: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c.prepare(sql).unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// The elements left in SmolVM's maps and sets, as `nft list ruleset` prints them.
fn elements() -> Vec<String> {
    elements_of("smolvm")
}

/// The elements left in the maps and sets of one project's tables (`smolvm`, `celesto`).
fn elements_of(project: &str) -> Vec<String> {
    let rs = ruleset();
    let mut out = Vec::new();
    let mut set = String::new();
    let mut text = String::new();
    let mut ours = false;
    for line in rs.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            let name = rest.split_whitespace().nth(1).unwrap_or_default();
            ours = name.starts_with(&format!("{project}_"));
            continue;
        }
        if !ours {
            continue;
        }
        if let Some(rest) = t.strip_prefix("map ").or_else(|| t.strip_prefix("set ")) {
            set = rest.split_whitespace().next().unwrap().to_string();
            text.clear();
        } else if let Some(rest) = t.strip_prefix("elements = { ") {
            text = rest.to_string();
        } else if !text.is_empty() {
            text.push(' ');
            text.push_str(t);
        }
        if !text.is_empty() && text.ends_with('}') {
            for e in text.trim_end_matches('}').split(',') {
                out.push(format!("{set}: {}", e.trim()));
            }
            text.clear();
        }
    }
    out.sort();
    out
}

#[test]
fn cleans_what_smolvm_005_made() {
    let Some(host) = Host::load("smolvm-0.0.5") else {
        return;
    };
    // A user's own files beside SmolVM's: named like a VM's log and disk, named by nothing else.
    std::fs::write(host.data.join("backup.log"), "mine").unwrap();
    std::fs::write(host.data.join("disks/golden-image.ext4"), "mine").unwrap();
    assert_eq!(comments().len(), 23);
    let r = host.run(&[]);
    // vm-0a1b2c3d is running with pid 328, which is not its VMM here (gone or reused);
    // vm-9c8d7e6f is already error. vm-5e6f7a8b matches the prefix; web-server is protected.
    r.expect(
        0,
        "Reconciled stale VMs: vm-0a1b2c3d, vm-9c8d7e6f\n\
         Targets (3):\n  - vm-0a1b2c3d\n  - vm-5e6f7a8b\n  - vm-9c8d7e6f\n\
         Deleted: vm-0a1b2c3d\nDeleted: vm-5e6f7a8b\nDeleted: vm-9c8d7e6f\nCleanup complete.\n",
    );
    assert_eq!(links(), ["lo", "tap4", "uplink0", "uplink0p"]);
    let mut want: Vec<String> = vec![
        "smolvm:global:forward:established".into(),
        "smolvm:global:forward:tap-isolation".into(),
        "smolvm:global:nat:masquerade:uplink0".into(),
        "smolvm:nat:tap:tap4:to:uplink0".into(),
    ];
    want.extend(std::iter::repeat_n("smolvm:web-server:ssh".to_string(), 4));
    want.sort();
    assert_eq!(comments(), want);
    assert_eq!(
        host.rows("SELECT id FROM vms UNION ALL SELECT vm_id FROM ip_leases UNION ALL SELECT vm_id FROM ssh_forwards"),
        ["web-server"; 3]
    );
    assert_eq!(
        host.files(),
        [
            "data",
            "data/assets",
            "data/assets/rootfs.ext4",
            "data/assets/vmlinux.bin",
            "data/backup.log",
            "data/disks",
            "data/disks/golden-image.ext4",
            "data/disks/web-server.ext4",
            "data/smolvm.db",
            "data/web-server.log",
            "sock"
        ]
    );
    assert_eq!(std::fs::read(host.data.join("backup.log")).unwrap(), b"mine");
}

/// SmolVM 0.0.36: elements of shared maps and sets instead of per-VM rules, a policy table
/// per TAP, a bridge TAP, lock and claim files, and an SDK VM (`sbx-hopper`) with no row.
#[test]
fn cleans_what_smolvm_036_made() {
    let Some(host) = Host::load("smolvm-0.0.36") else {
        return;
    };
    assert_eq!(elements().len(), 3 * 4 + 5);
    let before = ruleset();
    let dry = host.run(&["--dry-run"]);
    let targets = "Reconciled stale VMs: orphan-tap6, sbx-bohr, sbx-hopper, sbx-lovelace, sbx-noether, vm-a1b2c3d4\n\
         Targets (6):\n  - orphan-tap6\n  - sbx-bohr\n  - sbx-hopper\n  - sbx-lovelace\n  - sbx-noether\n  - vm-a1b2c3d4\n";
    dry.expect(0, &format!("{targets}Dry run complete. No changes made.\n"));
    assert_eq!(ruleset(), before, "a dry run changes no byte of the ruleset");
    let check = host.run(&["--check"]);
    assert_eq!(check.code, 1);
    assert!(
        check
            .stdout
            .contains("  - vm-a1b2c3d4: TAP tap2, nft table smolvm_policy_tap2, 5 nft elements,"),
        "{}",
        check.stdout
    );
    let doc: serde_json::Value = serde_json::from_str(&host.run(&["--dry-run", "--json"]).stdout).unwrap();
    let vm = doc["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "vm-a1b2c3d4")
        .unwrap();
    assert_eq!(vm["resources"]["nft_elements"], 5);

    // The default run: every stale VM and the prefix's; sbx-curie (stopped) is protected.
    host.run(&[]).expect(
        0,
        &format!(
            "{targets}Deleted: orphan-tap6\nDeleted: sbx-bohr\nDeleted: sbx-hopper\nDeleted: sbx-lovelace\n\
             Deleted: sbx-noether\nDeleted: vm-a1b2c3d4\nCleanup complete.\n"
        ),
    );
    assert_eq!(
        links(),
        ["br0", "eth1", "eth1p", "lo", "tap3", "uplink0", "uplink0p"]
    );
    assert_eq!(
        elements(),
        [
            "allowed_taps: \"tap3\"",
            "dnat_ext: 2201 : 172.16.0.3 . 22",
            "dnat_local: 2201 : 172.16.0.3 . 22",
            "fwd_allow: 172.16.0.3 . 22",
            "snat_return: 172.16.0.3 . 22",
        ]
    );
    let rs = ruleset();
    for tap in ["tap2", "tap4", "tap5", "tap6"] {
        assert!(!rs.contains(&format!("smolvm_policy_{tap}")), "{rs}");
    }
    assert!(rs.contains("table inet smolvm_policy_tap3"));
    assert_eq!(host.rows("SELECT id FROM vms"), ["sbx-curie"]);
    for table in ["ip_leases", "ssh_forwards", "vsock_cids", "tap_allocations"] {
        let left = host.rows(&format!("SELECT vm_id FROM {table}"));
        assert!(left.iter().all(|id| id == "sbx-curie"), "{table}: {left:?}");
    }
    assert_eq!(
        host.files(),
        [
            "data",
            "data/disks",
            "data/disks/sbx-curie.ext4",
            "data/locks",
            "data/locks/resources",
            "data/locks/sbx-curie.create.lock",
            "data/sbx-curie.log",
            "data/smolvm.db",
            "data/snapshots",
            "sock"
        ]
    );

    // --all: the protected VM too, and then SmolVM's shared tables with their maps and sets.
    host.run(&["--all"]).expect(
        0,
        "Targets (1):\n  - sbx-curie\nDeleted: sbx-curie\nCleanup complete.\n",
    );
    assert_eq!(links(), ["br0", "eth1", "eth1p", "lo", "uplink0", "uplink0p"]);
    assert_eq!(ruleset().trim(), "", "no SmolVM table is left");
    assert!(host.rows("SELECT id FROM vms").is_empty());
    assert!(
        host.data.join("snapshots").is_dir(),
        "snapshots are the user's data"
    );
}

/// An SDK VM alive (its VMM serving its socket and holding its TAP, its claim held): no
/// row names it, and a default run touches none of it while the stale VMs go.
#[test]
fn a_live_sdk_vm_of_smolvm_036_is_left_alone() {
    let Some(host) = Host::load("smolvm-0.0.36") else {
        return;
    };
    let sock = host.sock.join("fc-sbx-hopper.sock");
    std::fs::remove_file(&sock).unwrap();
    // The stand-in holds tap6 the way Firecracker does and serves the API socket.
    let tap = crate::util::hold_tap("tap6");
    let mut vmm = crate::util::Reaped(fake_vmm::spawn_at(&host.scratch.0, &sock));
    let claim = std::fs::File::open(host.data.join("locks/resources/ip-172.16.0.6.lock")).unwrap();
    rustix::fs::flock(&claim, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let r = host.run(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Deleted: vm-a1b2c3d4\n"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("hopper") && !r.stdout.contains("orphan-tap6"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("sbx-hopper: has no state row but is alive"),
        "{}",
        r.stderr
    );
    assert!(vmm.try_wait().unwrap().is_none(), "its VMM lives");
    assert!(links().contains(&"tap6".to_string()));
    assert!(ruleset().contains("table inet smolvm_policy_tap6"));
    assert!(elements().contains(&"allowed_taps: \"tap6\"".to_string()));
    assert!(sock.exists() && host.data.join("locks/resources/ip-172.16.0.6.lock").exists());
    assert!(host.data.join("disks/sbx-hopper.ext4").exists() && host.data.join("sbx-hopper.log").exists());
    drop((tap, claim));
}

/// SmolVM 0.0.36's state with its DB gone: sockets, create locks, policy tables, elements
/// and a bridge TAP's alias name the VMs, and cleanup reclaims them all from the host.
#[test]
fn smolvm_036_state_without_its_db_is_reclaimed_from_the_host() {
    let Some(host) = Host::load("smolvm-0.0.36") else {
        return;
    };
    // --prefix adds a protected VM by its id; the stale ones come whatever the prefix.
    let r = host.run(&["--dry-run", "--prefix", "sbx-cu"]);
    assert!(
        r.stdout
            .contains("Targets (7):\n  - orphan-tap6\n  - sbx-bohr\n  - sbx-curie\n"),
        "{}",
        r.stdout
    );
    std::fs::remove_file(host.data.join("smolvm.db")).unwrap();
    let r = host.run_found(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap2, orphan-tap3, orphan-tap4, orphan-tap5, orphan-tap6, sbx-bohr, \
         sbx-curie, sbx-hopper, sbx-lovelace, sbx-noether, vm-a1b2c3d4\n\
         Targets (11):\n  - orphan-tap2\n  - orphan-tap3\n  - orphan-tap4\n  - orphan-tap5\n  - orphan-tap6\n\
         \x20 - sbx-bohr\n  - sbx-curie\n  - sbx-hopper\n  - sbx-lovelace\n  - sbx-noether\n  - vm-a1b2c3d4\n\
         Deleted: orphan-tap2\nDeleted: orphan-tap3\nDeleted: orphan-tap4\nDeleted: orphan-tap5\n\
         Deleted: orphan-tap6\nDeleted: sbx-bohr\nDeleted: sbx-curie\nDeleted: sbx-hopper\nDeleted: sbx-lovelace\n\
         Deleted: sbx-noether\nDeleted: vm-a1b2c3d4\nCleanup complete.\n",
    );
    assert_eq!(links(), ["br0", "eth1", "eth1p", "lo", "uplink0", "uplink0p"]);
    assert!(elements().is_empty(), "{:?}", elements());
    assert!(!ruleset().contains("smolvm_policy_"));
    // A vsock claim names no VM, but no process holds it and no row has its CID: a gone
    // SDK VM's, it went with the stale VMs of its data dir.
    assert_eq!(
        host.files(),
        [
            "data",
            "data/disks",
            "data/locks",
            "data/locks/resources",
            "data/snapshots",
            "sock"
        ]
    );
}

/// The policy tables left in the ruleset, sorted.
fn policy_tables() -> Vec<String> {
    let mut v: Vec<String> = ruleset()
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| t.contains("_policy_"))
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// What the stopped VMs of both projects keep of the mixed host.
const MIXED_KEPT_FILES: [&str; 20] = [
    "cdata",
    "cdata/celesto.db",
    "cdata/disks",
    "cdata/disks/sbx-meitner.ext4",
    "cdata/locks",
    "cdata/locks/resources",
    "cdata/locks/sbx-meitner.create.lock",
    "cdata/sbx-meitner.log",
    "cdata/snapshots",
    "cdata/ssh-known-hosts",
    "cdata/ssh-known-hosts/sbx-meitner.known_hosts",
    "data",
    "data/disks",
    "data/disks/sbx-curie.ext4",
    "data/locks",
    "data/locks/sbx-curie.create.lock",
    "data/sbx-curie.log",
    "data/smolvm.db",
    "data/snapshots",
    "sock",
];

/// A host mid-upgrade (`celesto-0.1.10-mixed`): SmolVM 0.0.36 VMs in `smolvm.db`, Celesto
/// 0.1.10 VMs in `celesto.db`, both projects' tables over one TAP/IP/port pool (tap2 and
/// tap3 given twice), and a Celesto SDK VM with no row. Every stale VM goes entirely, in
/// its own project; the stopped VMs of both keep everything; `--all` then leaves nothing.
#[test]
fn cleans_a_host_mid_upgrade_from_smolvm_to_celesto() {
    let Some(host) = Host::load("celesto-0.1.10-mixed") else {
        return;
    };
    // Celesto 0.1.9+ keeps each VM's SSH host key here, and never deletes it.
    std::fs::create_dir_all(host.cdata.join("ssh-known-hosts")).unwrap();
    for id in ["sbx-tesla", "sbx-meitner"] {
        std::fs::write(
            host.cdata.join(format!("ssh-known-hosts/{id}.known_hosts")),
            "key",
        )
        .unwrap();
    }
    assert_eq!(policy_tables().len(), 6);
    let before = ruleset();
    let targets = "Reconciled stale VMs: orphan-tap5, sbx-hopper, sbx-tesla, vm-0a1b2c3d\n\
         Targets (5):\n  - orphan-tap5\n  - sbx-hopper\n  - sbx-tesla\n  - vm-0a1b2c3d\n  - vm-5e6f7a8b\n";
    let dry = host.run_found(&["--dry-run"]);
    dry.expect(0, &format!("{targets}Dry run complete. No changes made.\n"));
    assert_eq!(ruleset(), before);
    for (db, project) in [
        ("state/smolvm/smolvm.db", "SmolVM"),
        ("state/celesto/celesto.db", "Celesto"),
    ] {
        let line = format!("state DB: {} ({project})", host.scratch.0.join(db).display());
        assert!(dry.stderr.contains(&line), "{}", dry.stderr);
    }
    let check = host.run_found(&["--check"]);
    assert_eq!(check.code, 1);
    assert!(
        check
            .stdout
            .contains("  - sbx-tesla: TAP tap2, nft table celesto_policy_tap2, 5 nft elements,"),
        "{}",
        check.stdout
    );

    host.run_found(&[]).expect(
        0,
        &format!(
            "{targets}Deleted: orphan-tap5\nDeleted: sbx-hopper\nDeleted: sbx-tesla\nDeleted: vm-0a1b2c3d\n\
             Deleted: vm-5e6f7a8b\nCleanup complete.\n"
        ),
    );
    assert_eq!(links(), ["lo", "tap3", "uplink0", "uplink0p"]);
    assert_eq!(policy_tables(), ["celesto_policy_tap3", "smolvm_policy_tap3"]);
    let tap3 = [
        "allowed_taps: \"tap3\"",
        "dnat_ext: 2201 : 172.16.0.3 . 22",
        "dnat_local: 2201 : 172.16.0.3 . 22",
        "fwd_allow: 172.16.0.3 . 22",
        "snat_return: 172.16.0.3 . 22",
    ];
    assert_eq!(elements_of("smolvm"), tap3);
    assert_eq!(elements_of("celesto"), tap3);
    assert_eq!(host.rows("SELECT id FROM vms"), ["sbx-curie"]);
    assert_eq!(host.crows("SELECT id FROM vms"), ["sbx-meitner"]);
    for table in ["ip_leases", "ssh_forwards", "vsock_cids"] {
        assert!(
            host.rows(&format!("SELECT vm_id FROM {table}"))
                .iter()
                .all(|id| id == "sbx-curie")
        );
        assert!(
            host.crows(&format!("SELECT vm_id FROM {table}"))
                .iter()
                .all(|id| id == "sbx-meitner")
        );
    }
    assert_eq!(host.files(), MIXED_KEPT_FILES);
    host.run_found(&["--check"])
        .expect(0, "No leaked SmolVM resources.\n");

    // --all: both stopped VMs (DB order: SmolVM's data dir is found first), then each
    // project's shared tables.
    let all = host.run_found(&["--all"]);
    all.expect(
        0,
        "Targets (2):\n  - sbx-curie\n  - sbx-meitner\nDeleted: sbx-curie\nDeleted: sbx-meitner\nCleanup complete.\n",
    );
    for p in ["SmolVM", "Celesto"] {
        assert!(
            all.stderr
                .contains(&format!("removed {p}'s shared nftables tables")),
            "{}",
            all.stderr
        );
    }
    assert_eq!(links(), ["lo", "uplink0", "uplink0p"]);
    assert_eq!(ruleset().trim(), "", "no table of either project is left");
    assert!(host.rows("SELECT id FROM vms").is_empty() && host.crows("SELECT id FROM vms").is_empty());
    host.run_found(&["--check", "--all"])
        .expect(0, "No leaked SmolVM resources.\n");
}

/// The mixed host's Celesto VM `sbx-tesla` made live: a stand-in VMM serving its socket
/// and holding `tap2` (which the stale SmolVM VM `vm-0a1b2c3d` has too), its row saying so.
fn live_tesla_on_tap2(host: &Host) -> crate::util::Reaped {
    let sock = host.sock.join("fc-sbx-tesla.sock");
    let vmm = crate::util::Reaped(fake_vmm::spawn_holding(&host.scratch.0, &sock, Some("tap2")));
    let c = rusqlite::Connection::open(host.cdata.join("celesto.db")).unwrap();
    c.execute(
        "UPDATE vms SET pid = ?1, updated_at = ?2 WHERE id = 'sbx-tesla'",
        rusqlite::params![vmm.id(), crate::util::now_iso(1)],
    )
    .unwrap();
    vmm
}

/// Celesto's allocator hands a live Celesto VM the TAP, IP and port of a stale SmolVM VM:
/// everything of the stale VM goes, in SmolVM's tables, and what the live VM uses (the
/// TAP it holds, Celesto's elements and policy table) stays, and the run says so.
#[test]
fn a_stale_smolvm_vm_and_a_live_celesto_vm_on_one_tap() {
    let Some(host) = Host::load("celesto-0.1.10-mixed") else {
        return;
    };
    let sock = host.sock.join("fc-sbx-tesla.sock");
    std::fs::remove_file(&sock).unwrap();
    let mut vmm = live_tesla_on_tap2(&host);
    let r = host.run_found(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap5, sbx-hopper, vm-0a1b2c3d\n\
         Targets (4):\n  - orphan-tap5\n  - sbx-hopper\n  - vm-0a1b2c3d\n  - vm-5e6f7a8b\n\
         Deleted: orphan-tap5\nDeleted: sbx-hopper\nDeleted: vm-0a1b2c3d\nDeleted: vm-5e6f7a8b\nCleanup complete.\n",
    );
    assert!(
        r.stderr
            .contains("vm-0a1b2c3d: TAP tap2 is also claimed by a VM that is not a target; it is kept"),
        "{}",
        r.stderr
    );
    assert!(vmm.try_wait().unwrap().is_none(), "the live VM's VMM runs on");
    assert_eq!(links(), ["lo", "tap2", "tap3", "uplink0", "uplink0p"]);
    assert_eq!(
        policy_tables(),
        ["celesto_policy_tap2", "celesto_policy_tap3", "smolvm_policy_tap3"]
    );
    let s: Vec<String> = elements_of("smolvm")
        .into_iter()
        .filter(|e| e.contains("0.2"))
        .collect();
    assert!(s.is_empty(), "SmolVM's elements of the stale VM go: {s:?}");
    let c: Vec<String> = elements_of("celesto")
        .into_iter()
        .filter(|e| e.contains("0.2") || e.contains("tap2"))
        .collect();
    assert_eq!(
        c,
        [
            "allowed_taps: \"tap2\"",
            "dnat_ext: 2200 : 172.16.0.2 . 22",
            "dnat_local: 2200 : 172.16.0.2 . 22",
            "fwd_allow: 172.16.0.2 . 22",
            "snat_return: 172.16.0.2 . 22"
        ]
    );
    assert_eq!(host.rows("SELECT id FROM vms"), ["sbx-curie"]);
    assert_eq!(
        host.crows("SELECT id FROM vms ORDER BY id"),
        ["sbx-meitner", "sbx-tesla"]
    );
    assert!(sock.exists());
    assert!(!host.data.join("vm-0a1b2c3d.log").exists() && host.cdata.join("sbx-tesla.log").exists());
}

/// A leftover policy table of one project on a TAP that a live VM of the other project
/// now has (a SmolVM VM deleted without its cleanup, then Celesto's allocator gave its
/// TAP away): it would drop that VM's traffic, and it goes; the TAP and the live VM stay.
#[test]
fn a_smolvm_leftover_on_the_tap_of_a_live_celesto_vm_goes() {
    let Some(host) = Host::load("celesto-0.1.10-mixed") else {
        return;
    };
    // SmolVM's row of vm-0a1b2c3d is gone (deleted by hand); its nft state is not.
    let s = rusqlite::Connection::open(host.data.join("smolvm.db")).unwrap();
    s.execute_batch(
        "DELETE FROM ip_leases WHERE vm_id = 'vm-0a1b2c3d'; DELETE FROM ssh_forwards WHERE vm_id = 'vm-0a1b2c3d';
         DELETE FROM vms WHERE id = 'vm-0a1b2c3d';",
    )
    .unwrap();
    for f in [
        "vm-0a1b2c3d.log",
        "disks/vm-0a1b2c3d.ext4",
        "locks/vm-0a1b2c3d.create.lock",
    ] {
        std::fs::remove_file(host.data.join(f)).unwrap();
    }
    for f in [
        "fc-vm-0a1b2c3d.sock",
        "vsock-vm-0a1b2c3d.sock",
        "fc-sbx-tesla.sock",
    ] {
        std::fs::remove_file(host.sock.join(f)).unwrap();
    }
    let mut vmm = live_tesla_on_tap2(&host);
    let r = host.run_found(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap2, orphan-tap5, sbx-hopper\n\
         Targets (4):\n  - orphan-tap2\n  - orphan-tap5\n  - sbx-hopper\n  - vm-5e6f7a8b\n\
         Deleted: orphan-tap2\nDeleted: orphan-tap5\nDeleted: sbx-hopper\nDeleted: vm-5e6f7a8b\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains(
            "tap2: SmolVM objects for it belong to no SmolVM VM (a VM that is gone left them); they go, \
             and the TAP stays with Celesto's sbx-tesla"
        ),
        "{}",
        r.stderr
    );
    assert!(vmm.try_wait().unwrap().is_none());
    assert!(links().contains(&"tap2".to_string()));
    assert_eq!(
        policy_tables(),
        ["celesto_policy_tap2", "celesto_policy_tap3", "smolvm_policy_tap3"]
    );
    assert!(
        !elements_of("smolvm")
            .iter()
            .any(|e| e.contains("0.2") || e.contains("tap2"))
    );
    assert_eq!(
        elements_of("celesto")
            .iter()
            .filter(|e| e.contains("0.2") || e.contains("tap2"))
            .count(),
        5
    );
}

/// After a reboot: Celesto's `sbx-tesla` keeps a `running` row on tap2 whose VMM died,
/// and a live SmolVM 0.0.36 SDK VM (no row: `vm-0a1b2c3d`'s row gone) now holds tap2,
/// 172.16.0.2 and port 2200. The TAP's holder decides whose per-TAP objects are: the SDK
/// VM keeps tap2, SmolVM's policy table and elements for it; the dead Celesto VM goes
/// with Celesto's.
#[test]
fn a_live_sdk_vm_on_the_tap_of_a_dead_row_of_the_other_project_keeps_its_network() {
    let Some(host) = Host::load("celesto-0.1.10-mixed") else {
        return;
    };
    let s = rusqlite::Connection::open(host.data.join("smolvm.db")).unwrap();
    s.execute_batch(
        "DELETE FROM ip_leases WHERE vm_id = 'vm-0a1b2c3d'; DELETE FROM ssh_forwards WHERE vm_id = 'vm-0a1b2c3d';
         DELETE FROM tap_allocations WHERE vm_id = 'vm-0a1b2c3d'; DELETE FROM vms WHERE id = 'vm-0a1b2c3d';",
    )
    .unwrap();
    let sock = host.sock.join("fc-vm-0a1b2c3d.sock");
    std::fs::remove_file(&sock).unwrap();
    let mut sdk = crate::util::Reaped(fake_vmm::spawn_holding(&host.scratch.0, &sock, Some("tap2")));
    let smolvm_before: Vec<String> = elements_of("smolvm")
        .into_iter()
        .filter(|e| e.contains("0.2") || e.contains("tap2"))
        .collect();
    assert_eq!(smolvm_before.len(), 5, "{smolvm_before:?}");
    let r = host.run_found(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Deleted: sbx-tesla\n"), "{}", r.stdout);
    assert!(!r.stdout.contains("orphan-tap2"), "{}", r.stdout);
    assert!(sdk.try_wait().unwrap().is_none(), "the SDK VM's VMM runs on");
    assert!(links().contains(&"tap2".to_string()));
    let tables = policy_tables();
    assert!(tables.contains(&"smolvm_policy_tap2".to_string()), "{tables:?}");
    assert!(!tables.contains(&"celesto_policy_tap2".to_string()), "{tables:?}");
    let smolvm_after: Vec<String> = elements_of("smolvm")
        .into_iter()
        .filter(|e| e.contains("0.2") || e.contains("tap2"))
        .collect();
    assert_eq!(smolvm_after, smolvm_before, "the live SDK VM's elements stay");
    assert!(
        !elements_of("celesto")
            .iter()
            .any(|e| e.contains("0.2") || e.contains("tap2")),
        "the dead Celesto VM's elements go"
    );
    assert!(
        !host
            .crows("SELECT id FROM vms")
            .contains(&"sbx-tesla".to_string())
    );
    assert!(sock.exists());
}

/// Renames SmolVM's stopped `sbx-curie` of the mixed host to `sbx-tesla`, the id of
/// Celesto's crashed VM there (both projects draw ids from one generator, and each checks
/// only its own DB), rows and files; with `status`, its row says that too.
fn twin_tesla(host: &Host, status: Option<(&str, i64)>) {
    let s = rusqlite::Connection::open(host.data.join("smolvm.db")).unwrap();
    s.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    for t in [
        "vms SET id",
        "ip_leases SET vm_id",
        "ssh_forwards SET vm_id",
        "vsock_cids SET vm_id",
        "tap_allocations SET vm_id",
    ] {
        let col = t.rsplit(' ').next().unwrap();
        s.execute(&format!("UPDATE {t} = 'sbx-tesla' WHERE {col} = 'sbx-curie'"), [])
            .unwrap();
    }
    if let Some((status, pid)) = status {
        s.execute(
            "UPDATE vms SET status = ?1, pid = ?2 WHERE id = 'sbx-tesla'",
            rusqlite::params![status, pid],
        )
        .unwrap();
    }
    for f in [
        "disks/sbx-curie.ext4",
        "locks/sbx-curie.create.lock",
        "sbx-curie.log",
    ] {
        std::fs::rename(host.data.join(f), host.data.join(f.replace("curie", "tesla"))).unwrap();
    }
}

const TWIN_FILES: [&str; 3] = [
    "disks/sbx-tesla.ext4",
    "locks/sbx-tesla.create.lock",
    "sbx-tesla.log",
];

/// One id in both families is two VMs. SmolVM's `sbx-tesla` is stopped (protected: its
/// disk is the user's data) and Celesto's `sbx-tesla` crashed: the Celesto VM goes whole,
/// said as `sbx-tesla (Celesto)`; the SmolVM VM keeps its row, TAP and every file.
#[test]
fn one_id_in_both_families_is_two_vms_and_a_crash_of_one_never_takes_the_other() {
    let Some(host) = Host::load("celesto-0.1.10-mixed") else {
        return;
    };
    twin_tesla(&host, None);
    let r = host.run_found(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("  - sbx-tesla (Celesto)\n"), "{}", r.stdout);
    assert!(
        r.stdout.contains("Deleted: sbx-tesla (Celesto)\n"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("sbx-tesla (SmolVM)"), "{}", r.stdout);
    assert_eq!(host.rows("SELECT id FROM vms"), ["sbx-tesla"]);
    assert_eq!(host.rows("SELECT vm_id FROM ip_leases"), ["sbx-tesla"]);
    assert!(
        !host
            .crows("SELECT id FROM vms")
            .contains(&"sbx-tesla".to_string())
    );
    for f in TWIN_FILES {
        assert!(host.data.join(f).exists(), "SmolVM's {f} stays");
        assert!(!host.cdata.join(f).exists(), "Celesto's {f} goes");
    }
    assert!(
        links().contains(&"tap3".to_string()),
        "the stopped VM's TAP stays"
    );
    assert!(policy_tables().contains(&"smolvm_policy_tap3".to_string()));
}

/// Both stale: both go, each with its own files; `--all` (on a fresh host) the same.
#[test]
fn one_id_in_both_families_both_stale_both_go_each_with_its_own_files() {
    for args in [&[][..], &["--all"][..]] {
        let Some(host) = Host::load("celesto-0.1.10-mixed") else {
            return;
        };
        twin_tesla(&host, Some(("running", crate::util::dead_pid())));
        let r = host.run_found(args);
        assert_eq!(r.code, 0, "{args:?}: {}{}", r.stdout, r.stderr);
        for line in ["Deleted: sbx-tesla (Celesto)\n", "Deleted: sbx-tesla (SmolVM)\n"] {
            assert!(r.stdout.contains(line), "{args:?}: {}", r.stdout);
        }
        assert!(!host.rows("SELECT id FROM vms").contains(&"sbx-tesla".to_string()));
        assert!(
            !host
                .crows("SELECT id FROM vms")
                .contains(&"sbx-tesla".to_string())
        );
        for f in TWIN_FILES {
            assert!(!host.data.join(f).exists() && !host.cdata.join(f).exists(), "{f}");
        }
    }
}

/// A user's legacy `~/.local/state/smolvm` that Celesto kept writing into (it holds no
/// `~/.local/state/celesto`): `smolvm.db` and `celesto.db` side by side over one `disks/`
/// and `locks/`. Each file goes with the VM whose row, in either DB, names it.
#[test]
fn a_legacy_data_dir_holding_both_dbs() {
    let Some(host) = Host::load("celesto-0.1.10-mixed") else {
        return;
    };
    sh(&format!(
        "cp -a {0}/. {1}/ && rm -rf {0}",
        host.cdata.display(),
        host.data.display()
    ));
    let r = host.run_found(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap5, sbx-hopper, sbx-tesla, vm-0a1b2c3d\n\
         Targets (5):\n  - orphan-tap5\n  - sbx-hopper\n  - sbx-tesla\n  - vm-0a1b2c3d\n  - vm-5e6f7a8b\n\
         Deleted: orphan-tap5\nDeleted: sbx-hopper\nDeleted: sbx-tesla\nDeleted: vm-0a1b2c3d\n\
         Deleted: vm-5e6f7a8b\nCleanup complete.\n",
    );
    for (db, p) in [("smolvm.db", "SmolVM"), ("celesto.db", "Celesto")] {
        let line = format!("state DB: {} ({p})", host.data.join(db).display());
        assert!(r.stderr.contains(&line), "{}", r.stderr);
    }
    assert_eq!(links(), ["lo", "tap3", "uplink0", "uplink0p"]);
    assert_eq!(policy_tables(), ["celesto_policy_tap3", "smolvm_policy_tap3"]);
    assert_eq!(host.rows("SELECT id FROM vms"), ["sbx-curie"]);
    assert_eq!(
        rows_of(&host.data.join("celesto.db"), "SELECT id FROM vms"),
        ["sbx-meitner"]
    );
    assert_eq!(
        host.files(),
        [
            "data",
            "data/celesto.db",
            "data/disks",
            "data/disks/sbx-curie.ext4",
            "data/disks/sbx-meitner.ext4",
            "data/locks",
            "data/locks/resources",
            "data/locks/sbx-curie.create.lock",
            "data/locks/sbx-meitner.create.lock",
            "data/sbx-curie.log",
            "data/sbx-meitner.log",
            "data/smolvm.db",
            "data/snapshots",
            "sock"
        ]
    );
}

/// `CELESTO_DATA_DIR` names Celesto's data dir alone: its VMs are cleaned, and SmolVM's
/// data dir (found as SmolVM finds it) is read, never written: its stale VM is not this
/// run's, and the TAP its row has stays even though a Celesto target had it too.
#[test]
fn celesto_data_dir_limits_the_run_to_celestos_vms() {
    let Some(host) = Host::load("celesto-0.1.10-mixed") else {
        return;
    };
    let smolvm_db = std::fs::read(host.data.join("smolvm.db")).unwrap();
    let r = Run::from(
        crate::util::bin_found(&host.scratch.0, &host.sock)
            .env("CELESTO_DATA_DIR", &host.cdata)
            .output()
            .unwrap(),
    );
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap5, sbx-hopper, sbx-tesla\n\
         Targets (4):\n  - orphan-tap5\n  - sbx-hopper\n  - sbx-tesla\n  - vm-5e6f7a8b\n\
         Deleted: orphan-tap5\nDeleted: sbx-hopper\nDeleted: sbx-tesla\nDeleted: vm-5e6f7a8b\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains("the VMs of the other data dirs ("),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("sbx-tesla: TAP tap2 is also claimed by a VM that is not a target; it is kept"),
        "{}",
        r.stderr
    );
    assert_eq!(links(), ["lo", "tap2", "tap3", "uplink0", "uplink0p"]);
    assert_eq!(
        policy_tables(),
        ["celesto_policy_tap3", "smolvm_policy_tap2", "smolvm_policy_tap3"]
    );
    assert_eq!(elements_of("smolvm").len(), 10, "SmolVM's elements are all there");
    assert_eq!(std::fs::read(host.data.join("smolvm.db")).unwrap(), smolvm_db);
    assert!(host.data.join("vm-0a1b2c3d.log").exists() && host.sock.join("fc-vm-0a1b2c3d.sock").exists());
    assert_eq!(host.crows("SELECT id FROM vms"), ["sbx-meitner"]);
}

/// Holds an exclusive flock on each of `claims` (created), as SmolVM's SDK holds its
/// claim files while its VM lives, and waits until /proc/locks shows it.
fn sdk_holding(claims: &[PathBuf]) -> crate::util::Reaped {
    let script = "import fcntl, sys, time\n\
                  fs = [open(p, 'a') for p in sys.argv[1:]]\n\
                  [fcntl.flock(f, fcntl.LOCK_EX) for f in fs]\n\
                  time.sleep(600)\n";
    let child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(claims)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    crate::util::wait_until("the SDK's claims", std::time::Duration::from_secs(10), || {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        locks.lines().filter(|l| l.contains(&format!(" {pid} "))).count() == claims.len()
    });
    crate::util::Reaped(child)
}

/// Job B of `a_parallel_jobs_…`: its data dir, its SDK process holding three claims, and
/// its four live VMMs (logging to B; QEMU with its disk in B; `SMOLVM_DATA_DIR=B`; one
/// whose log in B was removed while it runs).
struct JobB {
    dir: PathBuf,
    sdk: crate::util::Reaped,
    vmms: [crate::util::Reaped; 4],
}

fn fc_argv(host: &Host, id: &str) -> Vec<String> {
    vec![
        "firecracker".into(),
        "--api-sock".into(),
        host.sock.join(format!("fc-{id}.sock")).display().to_string(),
    ]
}

fn start_job_b(host: &Host) -> JobB {
    let b = host.scratch.0.join("job-b/smolvm");
    std::fs::create_dir_all(b.join("locks/resources")).unwrap();
    std::fs::create_dir_all(b.join("disks")).unwrap();
    sh(
        "ip tuntap add tap8 mode tap && ip link set tap8 up && ip tuntap add tap9 mode tap && ip link set tap9 up",
    );
    nft("add table inet smolvm_policy_tap8
         add chain inet smolvm_policy_tap8 forward { type filter hook forward priority -10; policy accept; }
         add rule inet smolvm_policy_tap8 forward iifname \"tap8\" oifname \"tap*\" drop
         add element inet smolvm_filter allowed_taps { \"tap8\", \"tap9\" }
         add element inet smolvm_filter fwd_allow { 172.16.0.8 . 22 }");
    let claims: Vec<PathBuf> = ["ip-172.16.0.8.lock", "tap-tap8.lock", "tap-tap9.lock"]
        .iter()
        .map(|n| b.join("locks/resources").join(n))
        .collect();
    let sdk = sdk_holding(&claims);
    let scratch = &host.scratch.0;
    let b_str = b.display().to_string();
    let logged = crate::util::Reaped(fake_vmm::spawn_with(
        scratch,
        &fc_argv(host, "sbx-jobb"),
        Some(&b.join("sbx-jobb.log")),
        &[("SMOLVM_FAKE_VMM_TAP", "tap8")],
    ));
    let removed = crate::util::Reaped(fake_vmm::spawn_with(
        scratch,
        &fc_argv(host, "sbx-jobd"),
        Some(&b.join("sbx-jobd.log")),
        &[],
    ));
    std::fs::remove_file(b.join("sbx-jobd.log")).unwrap();
    std::fs::write(b.join("disks/sbx-jobq.qcow2"), "disk").unwrap();
    let qemu = crate::util::Reaped(fake_vmm::spawn_with(
        scratch,
        &[
            "qemu-system-x86_64".into(),
            "-drive".into(),
            format!("file={b_str}/disks/sbx-jobq.qcow2,if=virtio"),
            "-qmp".into(),
            format!(
                "unix:{}/qmp-sbx-jobq.sock,server=on,wait=off",
                host.sock.display()
            ),
        ],
        None,
        &[],
    ));
    let by_env = crate::util::Reaped(fake_vmm::spawn_with(
        scratch,
        &fc_argv(host, "sbx-jobe"),
        None,
        &[("SMOLVM_DATA_DIR", &b_str)],
    ));
    JobB {
        dir: b,
        sdk,
        vmms: [logged, qemu, by_env, removed],
    }
}

/// Issue 27, case 1: two CI jobs on one runner, each with its own data dir, sharing the
/// socket dir, the TAP pool and SmolVM's tables. Job A (the 0.0.36 fixture's data dir)
/// runs `--all` while job B's SDK VMs live: one whose VMM logs to B, a QEMU one whose disk
/// is in B, one whose VMM's environment names B, and a TAP B is still making (its claim
/// held, no VMM yet). Job A takes its own VMs only; job B's cleanup then takes B's.
#[test]
fn a_parallel_jobs_vms_are_never_taken_by_this_jobs_cleanup() {
    let Some(host) = Host::load("smolvm-0.0.36") else {
        return;
    };
    let JobB {
        dir: b,
        sdk,
        mut vmms,
    } = start_job_b(&host);
    let b_str = b.display().to_string();
    let scratch = &host.scratch.0;
    // Job A's own SDK VM, logging to A.
    let own = crate::util::Reaped(fake_vmm::spawn_with(
        scratch,
        &fc_argv(&host, "sbx-joba"),
        Some(&host.data.join("sbx-joba.log")),
        &[],
    ));
    for id in [
        "fc-sbx-jobb",
        "qmp-sbx-jobq",
        "fc-sbx-jobe",
        "fc-sbx-jobd",
        "fc-sbx-joba",
    ] {
        let sock = host.sock.join(format!("{id}.sock"));
        crate::util::wait_until("a stand-in's socket", std::time::Duration::from_secs(10), || {
            sock.exists()
        });
    }

    let r = host.run(&["--all"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Deleted: sbx-joba\n"), "{}", r.stdout);
    for theirs in ["jobb", "jobq", "jobe", "jobd", "tap8", "tap9"] {
        assert!(!r.stdout.contains(theirs), "{theirs}: {}", r.stdout);
    }
    for said in [
        format!(
            "sbx-jobb: VMM pid {} is of data dir {b_str} (by its log), not this run's",
            vmms[0].id()
        ),
        format!(
            "sbx-jobq: VMM pid {} is of data dir {b_str} (by its command line)",
            vmms[1].id()
        ),
        format!(
            "sbx-jobe: VMM pid {} is of data dir {b_str} (by its environment)",
            vmms[2].id()
        ),
        format!(
            "sbx-jobd: VMM pid {} is of data dir {b_str} (by its log)",
            vmms[3].id()
        ),
        format!(
            "tap9: claimed by pid {} in data dir {b_str} (tap-tap9.lock)",
            sdk.id()
        ),
    ] {
        assert!(r.stderr.contains(&said), "{said}\n{}", r.stderr);
    }
    let pid = own.id();
    crate::util::wait_until("job A's VMM stopped", std::time::Duration::from_secs(5), || {
        !crate::util::pid_alive(pid)
    });
    for v in &mut vmms {
        assert!(v.try_wait().unwrap().is_none(), "job B's VMMs live");
    }
    let l = links();
    assert!(l.contains(&"tap8".into()) && l.contains(&"tap9".into()), "{l:?}");
    assert!(!l.contains(&"tap2".into()), "job A's own leftovers go: {l:?}");
    assert!(ruleset().contains("table inet smolvm_policy_tap8"));
    let e = elements();
    for want in [
        "allowed_taps: \"tap8\"",
        "allowed_taps: \"tap9\"",
        "fwd_allow: 172.16.0.8 . 22",
    ] {
        assert!(e.contains(&want.to_string()), "{want}: {e:?}");
    }
    for f in [
        "sbx-jobb.log",
        "disks/sbx-jobq.qcow2",
        "locks/resources/tap-tap9.lock",
    ] {
        assert!(b.join(f).exists(), "{f}");
    }
    for s in ["fc-sbx-jobb", "qmp-sbx-jobq", "fc-sbx-jobe"] {
        assert!(host.sock.join(format!("{s}.sock")).exists(), "{s}");
    }
    assert!(!host.sock.join("fc-sbx-joba.sock").exists());

    job_b_cleans_its_own(&host, &b, sdk, vmms);
}

/// Job B's own post-step takes B's VMs; the TAP still being made stays while its claim is
/// held, and goes once its maker is gone.
fn job_b_cleans_its_own(host: &Host, b: &Path, sdk: crate::util::Reaped, mut vmms: [crate::util::Reaped; 4]) {
    let run_b = |args: &[&str]| {
        Run::from(
            bin()
                .arg("--state-dir")
                .arg(b)
                .arg("--socket-dir")
                .arg(&host.sock)
                .args(args)
                .env("HOME", &host.scratch.0)
                .output()
                .unwrap(),
        )
    };
    run_b(&["--all"]).expect(
        0,
        "Targets (4):\n  - sbx-jobb\n  - sbx-jobd\n  - sbx-jobe\n  - sbx-jobq\nDeleted: sbx-jobb\n\
         Deleted: sbx-jobd\nDeleted: sbx-jobe\nDeleted: sbx-jobq\nCleanup complete.\n",
    );
    for v in &mut vmms {
        let pid = v.id();
        crate::util::wait_until("job B's VMMs stopped", std::time::Duration::from_secs(5), || {
            !crate::util::pid_alive(pid)
        });
    }
    let l = links();
    assert!(!l.contains(&"tap8".into()) && l.contains(&"tap9".into()), "{l:?}");
    assert!(!ruleset().contains("smolvm_policy_tap8"));
    drop(sdk);
    run_b(&["--all"]).expect(
        0,
        "Reconciled stale VMs: orphan-tap9\nTargets (1):\n  - orphan-tap9\nDeleted: orphan-tap9\nCleanup complete.\n",
    );
    assert!(!links().contains(&"tap9".into()));
    assert!(elements().is_empty(), "{:?}", elements());
}
