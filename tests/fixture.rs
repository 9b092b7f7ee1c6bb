//! The state a real SmolVM 0.0.5 wrote (`tests/fixtures/smolvm-0.0.5`, from the shared fixtures): its DB as is,
//! its TAPs and its nft ruleset rebuilt from the dumps, its files from the listing.

use crate::util::{FIXTURES, Scratch, comments, enter_netns, links, nft, sh};

#[test]
fn cleans_what_smolvm_005_made() {
    if !enter_netns() {
        return;
    }
    let fx = std::path::Path::new(FIXTURES);
    let scratch = Scratch::new("fixture");
    let data = scratch.0.join("data");
    std::fs::create_dir_all(data.join("disks")).unwrap();
    std::fs::copy(fx.join("smolvm.db"), data.join("smolvm.db")).unwrap();
    let mut perms = std::fs::metadata(data.join("smolvm.db")).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(data.join("smolvm.db"), perms).unwrap();
    // Files SmolVM left under /var/lib/smolvm, moved under our data dir.
    for line in std::fs::read_to_string(fx.join("files.txt")).unwrap().lines() {
        let rel = line.strip_prefix("/var/lib/smolvm/").unwrap();
        if rel.ends_with(".log") || rel.starts_with("disks/") {
            std::fs::write(data.join(rel), rel).unwrap();
        }
    }
    // A user's own files beside SmolVM's: named like a VM's log and disk, named by nothing else.
    std::fs::write(data.join("backup.log"), "mine").unwrap();
    std::fs::write(data.join("disks/golden-image.ext4"), "mine").unwrap();
    // TAPs from `ip -d link show`: every "tun type tap" link.
    let dump = std::fs::read_to_string(fx.join("ip-link.txt")).unwrap();
    let mut name = "";
    for line in dump.lines() {
        if let Some(rest) = line.split(": ").nth(1).filter(|_| !line.starts_with(' ')) {
            name = rest.split('@').next().unwrap();
        } else if line.trim_start().starts_with("tun type tap") {
            sh(&format!("ip tuntap add {name} mode tap && ip link set {name} up"));
        }
    }
    sh("ip link add uplink0 type veth peer name uplink0p");
    nft(&std::fs::read_to_string(fx.join("nft-ruleset.txt")).unwrap());
    assert_eq!(comments().len(), 23);

    let sock = scratch.0.join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    let out = crate::util::bin()
        .arg("--state-dir")
        .arg(&data)
        .arg("--socket-dir")
        .arg(&sock)
        .output()
        .unwrap();
    let r = crate::util::Run::from(out);
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
    let c = rusqlite::Connection::open(data.join("smolvm.db")).unwrap();
    let ids: Vec<String> = c
        .prepare("SELECT id FROM vms UNION ALL SELECT vm_id FROM ip_leases UNION ALL SELECT vm_id FROM ssh_forwards")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ids, ["web-server"; 3]);
    let mut left: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .chain(std::fs::read_dir(data.join("disks")).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "backup.log",
            "disks",
            "golden-image.ext4",
            "smolvm-cleanup.lock",
            "smolvm.db",
            "web-server.ext4",
            "web-server.log"
        ]
    );
    assert_eq!(std::fs::read(data.join("backup.log")).unwrap(), b"mine");
}
