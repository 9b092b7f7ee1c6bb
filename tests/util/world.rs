//! The world builder: SmolVM-made state the way SmolVM 0.0.5 builds it (its schema and
//! rows, `ip tuntap` TAPs, its nft tables and commented rules, files) and stand-in VMMs,
//! in a scratch directory and the test's own network namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use super::fake_vmm;
use super::netns::{enter_netns, nft, pid_alive, sh};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("smolvm-it-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const SCHEMA_005: &str = "
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT NOT NULL, network TEXT,
    pid INTEGER, socket_path TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ip_leases (
    ip TEXT PRIMARY KEY, vm_id TEXT NOT NULL UNIQUE, tap_device TEXT NOT NULL, created_at TEXT NOT NULL,
    FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_vms_status ON vms(status);
CREATE INDEX IF NOT EXISTS idx_ip_leases_vm_id ON ip_leases(vm_id);
CREATE TABLE IF NOT EXISTS ssh_forwards (
    vm_id TEXT PRIMARY KEY, host_port INTEGER NOT NULL UNIQUE, guest_port INTEGER NOT NULL,
    created_at TEXT NOT NULL, FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_ssh_forwards_vm_id ON ssh_forwards(vm_id);
CREATE INDEX IF NOT EXISTS idx_ssh_forwards_host_port ON ssh_forwards(host_port);
";

/// The shared tables, base chains and global rules SmolVM 0.0.5 creates.
pub fn smolvm_base_nft(uplink: &str) -> String {
    format!(
        "table ip smolvm_nat {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    oifname \"{uplink}\" counter masquerade comment \"smolvm:global:nat:masquerade:{uplink}\"
  }}
}}
table inet smolvm_filter {{
  chain forward {{ type filter hook forward priority filter; policy accept;
    ct state established,related counter accept comment \"smolvm:global:forward:established\"
    iifname \"tap*\" oifname \"tap*\" counter drop comment \"smolvm:global:forward:tap-isolation\"
  }}
}}
"
    )
}

/// SmolVM 0.0.5's per-VM rules: the TAP's forward rule and the four SSH-forward rules.
pub fn smolvm_vm_nft(id: &str, octet: u32, port: u32, uplink: &str) -> String {
    let ip = format!("172.16.0.{octet}");
    let tap = format!("tap{octet}");
    format!(
        "add rule inet smolvm_filter forward iifname \"{tap}\" oifname \"{uplink}\" counter accept comment \"smolvm:nat:tap:{tap}:to:{uplink}\"
add rule ip smolvm_nat prerouting iifname \"{uplink}\" tcp dport {port} counter dnat to {ip}:22 comment \"smolvm:{id}:ssh\"
add rule ip smolvm_nat output ip daddr 127.0.0.1 tcp dport {port} counter dnat to {ip}:22 comment \"smolvm:{id}:ssh\"
add rule ip smolvm_nat postrouting ip saddr 127.0.0.0/8 ip daddr {ip} tcp dport 22 counter snat to 172.16.0.1 comment \"smolvm:{id}:ssh\"
add rule inet smolvm_filter forward ip daddr {ip} tcp dport 22 ct state new,related,established counter accept comment \"smolvm:{id}:ssh\"
"
    )
}

/// How the VM's VMM looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// No process (created/stopped, or a crashed VM whose pid is recorded as given).
    None,
    /// A stand-in Firecracker that exits on SIGTERM.
    Firecracker,
    /// A stand-in Firecracker that ignores SIGTERM.
    IgnoresTerm,
    /// A stand-in QEMU started on the VM's disk.
    Qemu,
    /// A stand-in Firecracker run by another user (this uid).
    FirecrackerAs(u32),
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub id: String,
    pub status: &'static str,
    /// TAP `tap<octet>`, IP 172.16.0.<octet>; None: no network (QEMU usernet).
    pub octet: Option<u32>,
    pub proc: Proc,
    /// Recorded pid when `proc` is None (a dead or foreign pid).
    pub pid: Option<i64>,
    /// Seconds added to "now" for updated_at.
    pub updated_offset: i64,
    pub files: bool,
}

impl VmSpec {
    pub fn new(id: &str, status: &'static str, octet: u32) -> VmSpec {
        VmSpec {
            id: id.into(),
            status,
            octet: Some(octet),
            proc: Proc::None,
            pid: None,
            updated_offset: 0,
            files: true,
        }
    }

    /// A crashed VM: `running` with the pid of a process that is gone.
    pub fn stale(id: &str, octet: u32) -> VmSpec {
        VmSpec {
            pid: Some(dead_pid()),
            ..VmSpec::new(id, "running", octet)
        }
    }

    pub fn running(id: &str, octet: u32) -> VmSpec {
        VmSpec {
            proc: Proc::Firecracker,
            ..VmSpec::new(id, "running", octet)
        }
    }
}

/// One SmolVM-like host inside this test's netns: data dir, socket dir, state DB, nft.
pub struct World {
    pub scratch: Scratch,
    pub data: PathBuf,
    pub sock: PathBuf,
    pub db: PathBuf,
    pub uplink: String,
    pub vmms: BTreeMap<String, Child>,
}

impl World {
    /// A namespace with an uplink, SmolVM's nft tables and an empty 0.0.5 DB.
    pub fn new(tag: &str) -> Option<World> {
        if !enter_netns() {
            return None;
        }
        let scratch = Scratch::new(tag);
        // Where SmolVM's own resolution finds it with XDG_STATE_HOME=<scratch>/state (see
        // `World::run_found`); snapshots name it `data/`.
        let data = scratch.0.join("state/smolvm");
        let sock = scratch.0.join("sock");
        std::fs::create_dir_all(data.join("disks")).unwrap();
        std::fs::create_dir_all(&sock).unwrap();
        let db = data.join("smolvm.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA_005).unwrap();
        drop(conn);
        sh(
            "ip link add uplink0 type veth peer name uplink0p && ip link set uplink0 up && ip link set uplink0p up",
        );
        nft(&smolvm_base_nft("uplink0"));
        Some(World {
            scratch,
            data,
            sock,
            db,
            uplink: "uplink0".into(),
            vmms: BTreeMap::new(),
        })
    }

    pub fn conn(&self) -> Connection {
        let c = Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        c
    }

    pub fn socket_path(&self, id: &str) -> PathBuf {
        self.sock.join(format!("fc-{id}.sock"))
    }

    /// Creates a VM the way SmolVM 0.0.5 does: row, lease, SSH port, TAP (+address and
    /// route), nft rules, log and disk copy, and its VMM when asked.
    pub fn add(&mut self, spec: VmSpec) {
        let port = 2200 + spec.octet.unwrap_or(0) + 100 * u32::from(spec.octet.is_none());
        let tap = spec.octet.map(|o| format!("tap{o}"));
        // QEMU (0.0.7+) runs on a qcow2 overlay, Firecracker on a raw ext4 copy.
        let ext = if spec.proc == Proc::Qemu { "qcow2" } else { "ext4" };
        let disk = self.data.join(format!("disks/{}.{ext}", spec.id));
        let config = format!(
            r#"{{"vm_id":"{id}","vcpu_count":2,"mem_size_mib":512,"kernel_path":"/k","rootfs_path":"{disk}","extra_drives":[],"boot_args":"console=ttyS0","backend":"{backend}","disk_mode":"isolated","retain_disk_on_delete":false,"env_vars":{{}},"network_rate_limit_mbps":null}}"#,
            id = spec.id,
            disk = disk.display(),
            backend = if spec.proc == Proc::Qemu {
                "qemu"
            } else {
                "firecracker"
            },
        );
        let network = match spec.octet {
            Some(o) => format!(
                r#"{{"guest_ip":"172.16.0.{o}","gateway_ip":"172.16.0.1","netmask":"255.255.255.0","tap_device":"tap{o}","guest_mac":"AA:FC:00:00:00:{o:02X}","ssh_host_port":{port}}}"#
            ),
            None => format!(
                r#"{{"guest_ip":"10.0.2.15","gateway_ip":"10.0.2.2","netmask":"255.255.255.0","tap_device":"usernet","guest_mac":"AA:FC:00:00:00:01","ssh_host_port":{port}}}"#
            ),
        };
        if let Some(o) = spec.octet {
            sh(&format!(
                "ip tuntap add tap{o} mode tap && ip addr add 172.16.0.1/32 dev tap{o} && ip link set tap{o} up && ip route add 172.16.0.{o}/32 dev tap{o}"
            ));
            nft(&smolvm_vm_nft(&spec.id, o, port, &self.uplink));
        }
        if spec.files {
            std::fs::write(&disk, b"rootfs copy").unwrap();
            std::fs::write(self.data.join(format!("{}.log", spec.id)), b"vmm log").unwrap();
        }
        let pid = match spec.proc {
            Proc::None => spec.pid,
            p => {
                // Another user's stand-in may not open /dev/net/tun: only root's hold their TAP.
                let holds = tap.as_deref().filter(|_| !matches!(p, Proc::FirecrackerAs(_)));
                let child = fake_vmm::spawn(self, &spec.id, p, holds);
                let pid = i64::from(child.id());
                self.vmms.insert(spec.id.clone(), child);
                Some(pid)
            }
        };
        // SmolVM records the control socket: Firecracker's API socket, QEMU's QMP socket.
        let socket_path = match spec.proc {
            Proc::None => None,
            Proc::Qemu => Some(
                self.sock
                    .join(format!("qmp-{}.sock", spec.id))
                    .display()
                    .to_string(),
            ),
            _ => Some(self.socket_path(&spec.id).display().to_string()),
        };
        if spec.proc == Proc::None && spec.files && spec.status == "running" {
            // A crashed Firecracker leaves its API socket behind, unserved.
            let l = std::os::unix::net::UnixListener::bind(self.socket_path(&spec.id)).unwrap();
            drop(l);
        }
        let created = now_iso(spec.updated_offset - 1);
        let updated = now_iso(spec.updated_offset);
        let c = self.conn();
        c.execute(
            "INSERT INTO vms (id, status, config, network, pid, socket_path, created_at, updated_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
            params![spec.id, spec.status, config, network, pid, socket_path, created, updated],
        )
        .unwrap();
        c.execute(
            "INSERT INTO ssh_forwards (vm_id, host_port, guest_port, created_at) VALUES (?1,?2,22,?3)",
            params![spec.id, port, created],
        )
        .unwrap();
        if let (Some(o), Some(tap)) = (spec.octet, tap) {
            c.execute(
                "INSERT INTO ip_leases (ip, vm_id, tap_device, created_at) VALUES (?1,?2,?3,?4)",
                params![format!("172.16.0.{o}"), spec.id, tap, created],
            )
            .unwrap();
        }
    }

    pub fn ids(&self) -> Vec<String> {
        let c = self.conn();
        let mut s = c.prepare("SELECT id FROM vms ORDER BY id").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    pub fn status(&self, id: &str) -> Option<(String, Option<i64>)> {
        self.conn()
            .query_row("SELECT status, pid FROM vms WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok()
    }

    pub fn child_rows(&self, table: &str) -> Vec<String> {
        let c = self.conn();
        let mut s = c
            .prepare(&format!("SELECT vm_id FROM {table} ORDER BY vm_id"))
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Reaps a stand-in VMM (cleanup killed it) and says whether it had exited by then.
    pub fn reap(&mut self, id: &str) -> bool {
        let mut c = self.vmms.remove(id).expect("no such stand-in VMM");
        let pid = c.id();
        let exited = !pid_alive(pid);
        let _ = c.kill();
        let _ = c.wait();
        exited
    }

    pub fn vmm_pid(&self, id: &str) -> u32 {
        self.vmms[id].id()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.vmms) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The world of SmolVM's own probe: a crashed VM, a stopped one, a protected `keepme`, a
/// running row with no pid, and (with `live`) a live VM first.
pub fn probe_world(tag: &str, live: bool) -> Option<World> {
    let mut w = World::new(tag)?;
    if live {
        w.add(VmSpec::running("vm-aaaa0001", 2));
    }
    w.add(VmSpec::stale("vm-bbbb0002", 3));
    w.add(VmSpec::new("vm-cccc0003", "stopped", 4));
    w.add(VmSpec::new("keepme", "created", 5));
    w.add(VmSpec::new("vm-dddd0004", "running", 6));
    Some(w)
}

/// A pid that was just in use and now is not (its process has exited and been reaped).
pub fn dead_pid() -> i64 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    i64::from(pid)
}

pub fn now_iso(offset_secs: i64) -> String {
    let t =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap() + offset_secs;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S.000000+00:00"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
