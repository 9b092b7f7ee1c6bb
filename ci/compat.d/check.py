"""One SmolVM or Celesto release through cleanup, with state made by that release's own
code, in the private network and mount namespace `ci/compat` runs it in (its own /tmp):

  1. kept VMs: `sbx-keep` (stopped, another prefix) and `sbx-live` (running: a stand-in
     VMM holds its TAP and serves its API socket); the world is snapshotted;
  2. targets: `sbx-crash` (running, its VMM gone), `vm-target` (created, the prefix),
     `sbx-qemu` (a QEMU VM, running, its VMM gone; on a TAP from 0.0.18), and where the
     release has them `vm-bridge` (bridge mode, 0.0.27+) and an SDK VM with no row;
  3. `--dry-run` changes nothing, `--check` exits 1;
  4. the default run removes exactly what step 2 added: the world is step 1's again;
  5. the release creates VMs again (an element left behind would fail: File exists);
  6. (0.0.30+) an SDK VM whose VMM runs (a stand-in holding its TAP) and whose owner is
     gone; then `--all` leaves no TAP, no table of the project, no row, no VM file, and
     `--check --all` exits 0.

    check.py release <bin> <module> <version> <epoch> <venv-python> <work-dir>
    check.py mixed <bin> <smolvm-python> <celesto-python> <work-dir>

Prints one line; exits 1 naming what was left or taken.
"""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout: under /tmp it is bound into the private /tmp, and is no VM's state.
REPO = HERE.parent.parent


class Fail(Exception):
    pass


def run(cmd, env=None, check=True):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise Fail(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stdout}{p.stderr}".strip())
    return p


def uplink():
    """An uplink with a default route, and a bridge with a port for bridge-mode VMs (no
    IPv6 address anywhere: SmolVM refuses a bridge that gives the host one)."""
    for c in (
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1",
        "sysctl -qw net.ipv6.conf.default.disable_ipv6=1",
        "ip link set lo up",
        "ip link add uplink0 type veth peer name uplink0p",
        "ip addr add 10.99.0.2/24 dev uplink0",
        "ip link set uplink0 up",
        "ip link set uplink0p up",
        "ip route add default via 10.99.0.1",
        "ip link add br0 type bridge",
        "ip link set br0 up",
        "ip link add eth1 type veth peer name eth1p",
        "ip link set eth1 master br0",
        "ip link set eth1 up",
        "ip link set eth1p up",
    ):
        run(c.split())


class Release:
    """One release's venv, its data dir (named by its own variable) and home."""

    def __init__(self, module, version, py, work):
        self.module, self.version, self.py = module, version, py
        self.data = work / module
        self.env = {**os.environ, f"{module.upper()}_DATA_DIR": str(self.data), "HOME": str(work / "home")}

    def make(self, *args):
        return run([self.py, HERE / "make.py", self.module, *args], env=self.env)

    def db(self):
        return self.data / f"{self.module}.db"

    def tap(self, vid):
        with sqlite3.connect(self.db()) as c:
            return c.execute("SELECT tap_device FROM ip_leases WHERE vm_id = ?", (vid,)).fetchone()[0]

    def has(self, feature):
        return run([self.py, HERE / "make.py", self.module, "has", feature], env=self.env, check=False).returncode == 0

    def has_sdk_without_rows(self):
        # The SDK keeps its state in memory from SmolVM 0.0.30 on (Celesto: always).
        return self.module == "celesto" or tuple(map(int, self.version.split("."))) >= (0, 0, 30)


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def standin(vid, tap):
    """A stand-in VMM for `vid`, holding `tap` and serving /tmp/fc-<vid>.sock."""
    p = subprocess.Popen(
        ["firecracker", HERE / "standin.py", "--api-sock", f"/tmp/fc-{vid}.sock", "--tap", tap],
        executable=sys.executable,
        stdout=subprocess.PIPE,
        text=True,
    )
    if p.stdout.readline().strip() != "ready":
        raise Fail(f"the stand-in VMM of {vid} did not start")
    return p


def live_vm(rel, vid):
    """`vid` running: its row says so, with the pid of a stand-in VMM."""
    p = standin(vid, rel.tap(vid))
    rel.make("set", vid, "running", str(p.pid))
    return p


def taps():
    return {o[1] for o in snapshot([], []) if o[0] == "tap"}


def norm(v):
    """An nft JSON object without what changes by itself (handles, counters)."""
    if isinstance(v, dict):
        return {k: (norm(x) if k != "counter" else {}) for k, x in v.items() if k != "handle"}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


def snapshot(dirs, dbs):
    """The world as cleanup could change it, as a set of comparable objects."""
    out = set()
    for l in json.loads(run(["ip", "-j", "-d", "link", "show"]).stdout):
        if l.get("linkinfo", {}).get("info_kind") == "tun":
            out.add(("tap", l["ifname"], l.get("ifalias", "")))
    for item in json.loads(run(["nft", "-j", "list", "ruleset"]).stdout)["nftables"]:
        (kind, o), = item.items()
        if kind == "table":
            out.add(("table", o["family"], o["name"]))
        elif kind == "chain":
            out.add(("chain", o["family"], o["table"], o["name"]))
        elif kind == "rule":
            out.add(("rule", o["family"], o["table"], o["chain"], json.dumps(norm(o["expr"])), o.get("comment", "")))
        elif kind in ("set", "map"):
            out.add((kind, o["family"], o["table"], o["name"]))
            for e in o.get("elem", []):
                out.add(("elem", o["family"], o["table"], o["name"], json.dumps(norm(e))))
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            subdirs[:] = [n for n in subdirs if Path(root, n) != REPO]
            for n in subdirs + files:
                p = Path(root, n)
                if ".db" not in n:
                    out.add(("file", str(p)))
    for db in dbs:
        if db.exists():
            with sqlite3.connect(db) as c:
                tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                for t in tables:
                    for r in c.execute(f"SELECT * FROM {t}"):
                        out.add(("row", db.name, t, json.dumps(r)))
    return out


def show(objs, limit=6):
    objs = sorted(objs)
    text = "; ".join(" ".join(map(str, o)) for o in objs[:limit])
    return text + (f"; … ({len(objs)} in all)" if len(objs) > limit else "")


def cleanup(bin_, env, *args, code=0):
    p = run([bin_, *args], env=env, check=False)
    if p.returncode != code:
        raise Fail(f"cleanup {' '.join(args) or '(default)'} exited {p.returncode}, not {code}: {p.stdout}{p.stderr}")
    return p


def release(bin_, module, version, epoch, py, work):
    uplink()
    rel = Release(module, version, py, work)
    dirs, dbs = [rel.data, Path("/tmp"), work / "home"], [rel.db()]
    rel.make("create", "sbx-keep")
    rel.make("set", "sbx-keep", "stopped")
    rel.make("create", "sbx-live")
    live = live_vm(rel, "sbx-live")
    kept = snapshot(dirs, dbs)
    rel.make("create", "sbx-crash")
    rel.make("set", "sbx-crash", "running", str(dead_pid()))
    rel.make("create", "vm-target")
    rel.make("qemu", "sbx-qemu")
    rel.make("set", "sbx-qemu", "running", str(dead_pid()))
    kinds = ["a stale", "a prefixed", "a stale QEMU" + (" (TAP)" if rel.has("qemu-tap") else "")]
    if rel.has("bridge"):
        rel.make("bridge", "vm-bridge")
        kinds.append("a bridge")
    sdk = rel.has_sdk_without_rows()
    if sdk:
        rel.make("sdk", "sbx-sdk")
        kinds.append("an SDK")
    full = snapshot(dirs, dbs)
    added = full - kept
    if not added or kept - full:
        raise Fail("making the targets added nothing, or changed the kept VMs")

    cleanup(bin_, rel.env, "--dry-run")
    if snapshot(dirs, dbs) != full:
        raise Fail(f"--dry-run changed: {show(snapshot(dirs, dbs) ^ full)}")
    cleanup(bin_, rel.env, "--check", code=1)
    out = cleanup(bin_, rel.env).stdout
    for vid in ("sbx-crash", "vm-target", "sbx-qemu"):
        if f"Deleted: {vid}\n" not in out:
            raise Fail(f"{vid} was not deleted: {out}")
    after = snapshot(dirs, dbs)
    # Directories the targets' creation made (locks/resources/) are SmolVM's layout, not a VM's.
    left = {o for o in added & after if not (o[0] == "file" and Path(o[1]).is_dir())}
    taken = kept - after
    if left or taken:
        raise Fail(f"left of the targets: {show(left) or 'nothing'}; taken of the kept VMs: {show(taken) or 'nothing'}")
    if live.poll() is not None:
        raise Fail("the live VM's VMM was stopped")

    rel.make("create", "sbx-again", "vm-again")
    vmms = [live]
    if sdk:
        # An SDK VM whose owner is gone but whose VMM runs: no row; the TAP it holds, its
        # policy table and elements go with it when --all stops it, in the same run.
        before = taps()
        rel.make("sdk", "sbx-sdklive")
        (tap,) = taps() - before
        vmms.append(standin("sbx-sdklive", tap))
    cleanup(bin_, rel.env, "--all")
    final = snapshot(dirs, dbs)
    assets = {("file", str(rel.data / n)) for n in ("vmlinux.bin", "rootfs.ext4")}
    stays = {o for o in final if o[0] == "file" and Path(o[1]).is_dir()} | assets
    left = {o for o in final - stays if o[0] != "row" or o[2] == "vms" or o[2] == "ip_leases"}
    left = {o for o in left if o[0] != "file" or not o[1].startswith("/tmp/") or "sock" in o[1] or "libkrun" in o[1]}
    if left:
        raise Fail(f"--all left: {show(left)}")
    for p in vmms:
        if p.wait(timeout=10) is None:
            raise Fail("--all did not stop a live VM's VMM")
    cleanup(bin_, rel.env, "--check", "--all")
    n = len(added)
    what = ", ".join(kinds[:-1]) + " and " + kinds[-1] + " VM"
    live_sdk = ", a live SDK VM's TAP and tables with it" if sdk else ""
    print(f"{module} {version} ({epoch}): ok ({what}: {n} objects removed, 2 kept VMs untouched; "
          f"recreated; --all left nothing{live_sdk})")


def mixed(bin_, spy, cpy, work):
    """A host mid-upgrade: SmolVM 0.0.36's VMs, then Celesto's, which its allocator gives
    the same TAPs, IPs and ports; Celesto's VM on the stale SmolVM VM's TAP is live."""
    uplink()
    s = Release("smolvm", "0.0.36", spy, work)
    c = Release("celesto", "0.1.10", cpy, work)
    env = {**s.env, **c.env}
    dirs, dbs = [s.data, c.data, Path("/tmp"), work / "home"], [s.db(), c.db()]
    s.make("create", "sbx-old-crash", "sbx-old-keep")
    s.make("set", "sbx-old-crash", "running", str(dead_pid()))
    s.make("set", "sbx-old-keep", "stopped")
    c.make("create", "sbx-new-live", "sbx-new-keep")
    c.make("set", "sbx-new-keep", "stopped")
    tap = s.tap("sbx-old-crash")
    if c.tap("sbx-new-live") != tap:
        raise Fail("Celesto's allocator did not hand out SmolVM's TAP again: no collision to test")
    live = live_vm(c, "sbx-new-live")
    before = snapshot(dirs, dbs)
    out = cleanup(bin_, env).stdout
    if "Deleted: sbx-old-crash\n" not in out:
        raise Fail(f"the stale SmolVM VM was not deleted: {out}")
    after = snapshot(dirs, dbs)
    ip = "172.16.0." + tap[3:]
    taken = before - after
    stray = {o for o in taken if not ("smolvm" in str(o) and (ip in str(o) or tap in str(o) or "sbx-old-crash" in str(o)))}
    if stray:
        raise Fail(f"taken, not the stale SmolVM VM's: {show(stray)}")
    must_go = {o for o in before if o[0] in ("table", "elem") and "smolvm" in o[2] and (ip in str(o) or tap in str(o))}
    if must_go & after:
        raise Fail(f"left of the stale SmolVM VM: {show(must_go & after)}")
    if ("tap", tap, "") not in after or live.poll() is not None:
        raise Fail("the live Celesto VM lost its TAP or its VMM")
    # (SmolVM would give its next VM the TAP the live Celesto VM holds: EBUSY, its own
    # collision; it creates again after --all.)
    c.make("create", "sbx-new-again")
    cleanup(bin_, env, "--all")
    if run(["nft", "list", "ruleset"]).stdout.strip() or any(o[0] == "tap" for o in snapshot(dirs, dbs)):
        raise Fail("--all left tables or TAPs")
    cleanup(bin_, env, "--check", "--all")
    s.make("create", "sbx-old-again")
    c.make("create", "sbx-new-again2")
    print(f"mixed smolvm 0.0.36 + celesto 0.1.10: ok ({len(taken)} objects of the stale SmolVM VM on {tap} removed; "
          "the live Celesto VM on it untouched; both recreate; --all left nothing)")


if __name__ == "__main__":
    try:
        if sys.argv[1] == "release":
            release(*sys.argv[2:7], Path(sys.argv[7]))
        else:
            mixed(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
    except Fail as e:
        print(f"{' '.join(sys.argv[3:5])}: FAILED: {e}")
        sys.exit(1)
