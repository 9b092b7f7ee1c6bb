"""The release image, run for real with podman against SmolVM state, each run in a fresh
private network and mount namespace where the host's paths are private copies
(/var/lib/smolvm, /var/lib/celesto, /var/lib/node_exporter, a sticky /tmp):

  the state is SmolVM 0.0.36's fixture (tests/fixtures/smolvm-0.0.36), plus live
  stand-in VMMs owned by uid 1000 (sockets in the sticky /tmp, their TAPs held):
  vm-a1b2c3d4 (a `vm-` target: its VMM must be stopped), sbx-noether (kept) and the SDK
  VM sbx-hopper (no row; kept);

  runs: the bare binary (the oracle), the README's `docker run` line, and the
  DaemonSet's exact securityContext, args and mounts (from deploy/kubernetes); each
  container run must leave the world exactly as the bare run did and print the same;
  then the DaemonSet's list less each capability: the run must name the one missing.

    run.py <image> <bare binary>        (as root; prints one line per run)
"""
import ctypes
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# The stand-in Firecracker ci/compat runs (its command line is SmolVM's own).
_spec = importlib.util.spec_from_file_location("compat", REPO / "ci/compat.d/check.py")
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)
FIXTURE = REPO / "tests/fixtures/smolvm-0.0.36"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
USER = 1000
LIVE = {"vm-a1b2c3d4": "tap2", "sbx-noether": "tap5", "sbx-hopper": "tap6"}


class Fail(Exception):
    pass


def sh(cmd, stdin=None, check=True, **kw):
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise Fail(f"{cmd}: {p.stdout}{p.stderr}")
    return p


def daemonset():
    """The DaemonSet's container: its capabilities and args, from the manifest itself."""
    text = (REPO / "deploy/kubernetes/daemonset.yaml").read_text()
    caps = json.loads(re.search(r"add: (\[.*?\])", text).group(1))
    args = json.loads(re.search(r"args: (\[.*?\])", text, re.S).group(1).replace("\n", " "))
    # One run, not a loop: --every and its value go.
    i = args.index("--every")
    return caps, args[:i] + args[i + 2:]


def readme_docker_run():
    """The README's `docker run` line: its flags, as podman takes them."""
    text = (REPO / "README.md").read_text()
    line = re.search(r"docker run (--rm .*?) \S*smolvm-cleanup\S* --dry-run", text, re.S).group(1)
    return line.replace("\\\n", " ").split()


def build_world():
    """Mounts the private host paths and makes the fixture's state and the live VMs."""
    for d in ("/var/lib/smolvm", "/var/lib/celesto", "/var/lib/node_exporter"):
        os.makedirs(d, exist_ok=True)
        sh(["mount", "-t", "tmpfs", "tmpfs", d])
    os.chmod("/tmp", 0o1777)
    for c in ("ip link set lo up", "ip link add uplink0 type veth peer name uplink0p", "ip link set uplink0 up",
              "ip link add br0 type bridge", "ip link add eth1 type veth peer name eth1p",
              "ip link set eth1 master br0"):
        sh(c.split())
    shutil.copy(FIXTURE / "smolvm.db", "/var/lib/smolvm/smolvm.db")
    for line in (FIXTURE / "files.txt").read_text().splitlines():
        p = Path(line)
        if line.endswith(".sock"):
            import socket
            s = socket.socket(socket.AF_UNIX)
            s.bind(line)
            s.close()
        elif p.suffix == ".db":
            continue
        elif p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(line)
        else:
            p.mkdir(parents=True, exist_ok=True)
    name = None
    for line in (FIXTURE / "ip-link.txt").read_text().splitlines():
        if not line.startswith(" ") and ": " in line:
            name = line.split(": ")[1].split("@")[0]
        elif line.strip().startswith("tun type tap"):
            user = ["user", str(USER)] if name in LIVE.values() else []
            sh(["ip", "tuntap", "add", name, "mode", "tap", *user])
            sh(["ip", "link", "set", name, "up"])
        elif line.strip().startswith("alias "):
            sh(["ip", "link", "set", name, "alias", line.strip()[6:]])
    sh(["nft", "-f", "-"], stdin=(FIXTURE / "nft-ruleset.txt").read_text())
    procs = []
    db = sqlite3.connect("/var/lib/smolvm/smolvm.db")
    for vid, tap in LIVE.items():
        sock = Path(f"/tmp/fc-{vid}.sock")
        sock.unlink(missing_ok=True)
        # /dev/net/tun opened here, as root, for a user who may not open it (as a jailer does).
        tun = os.open("/dev/net/tun", os.O_RDWR)
        try:
            p = compat.standin(vid, tap, env={"SMOLVM_STANDIN_TUN_FD": str(tun)}, user=USER, group=USER,
                               pass_fds=[tun])
        except compat.Fail as e:
            raise Fail(str(e)) from None
        os.close(tun)
        procs.append(p)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime(time.time() + 1))
        db.execute("UPDATE vms SET pid = ?, updated_at = ? WHERE id = ?", (p.pid, now, vid))
    db.commit()
    db.close()
    return procs


def snapshot(procs):
    """The world as a run could change it."""
    out = set()
    for l in json.loads(sh(["ip", "-j", "-d", "link", "show"]).stdout):
        out.add(("link", l["ifname"]))
    ruleset = json.loads(sh(["nft", "-j", "list", "ruleset"]).stdout)["nftables"]
    for item in ruleset:
        (kind, o), = item.items()
        o = {k: v for k, v in o.items() if k != "handle"}
        out.add(("nft", kind, json.dumps(o, sort_keys=True)))
    for d in ("/var/lib/smolvm", "/var/lib/celesto", "/tmp"):
        for root, dirs, files in os.walk(d):
            dirs[:] = [n for n in dirs if not str(Path(root, n)).startswith(str(REPO))]
            for n in files + dirs:
                out.add(("file", str(Path(root, n))))
    db = sqlite3.connect("/var/lib/smolvm/smolvm.db")
    for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for r in db.execute(f"SELECT * FROM {t}"):
            if t == "vms":  # a live VM's pid and stamp are its stand-in's, new in each world
                r = r[:4] + r[5:-1]
            out.add(("row", t, json.dumps(r)))
    for p in procs:
        out.add(("vmm", str(p.args[p.args.index("--api-sock") + 1]), p.poll() is None))
    return out


def one(how, image, bare, caps=None):
    """A fresh world in this process's private namespaces: run, and what it left."""
    procs = build_world()
    try:
        mounts = ["-v", "/var/lib/smolvm:/var/lib/smolvm", "-v", "/var/lib/celesto:/var/lib/celesto",
                  "-v", "/tmp:/tmp"]
        if how == "bare":
            cmd = [bare]
        elif how == "docker-run":
            cmd = [*PODMAN, "run", *LIMITS, *[f for f in readme_docker_run() if f != "--rm"], "--rm", image]
        else:
            ds_caps, args = daemonset()
            add = [a for c in (caps if caps is not None else ds_caps) for a in ("--cap-add", c)]
            cmd = [*PODMAN, "run", "--rm", *LIMITS, "--user", "0", "--pid=host", "--network=host",
                   "--cap-drop", "ALL", *add, *mounts, "-v", "/var/lib/node_exporter:/textfile", image, *args]
        t = time.perf_counter()
        p = sh(cmd, check=False)
        took = time.perf_counter() - t
        time.sleep(0.2)
        if how == "daemonset" and not Path("/var/lib/node_exporter/smolvm_cleanup.prom").is_file():
            raise Fail("the DaemonSet's run wrote no metrics to its /textfile mount")
        return p, snapshot(procs), took
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def in_namespaces(fn, *args):
    """fn in a forked child with its own network and mount namespaces; its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x40000000 | 0x00020000) != 0:  # CLONE_NEWNET | CLONE_NEWNS
                raise OSError(ctypes.get_errno(), "unshare")
            sh(["mount", "--make-rprivate", "/"])
            # A private /tmp; a checkout under /tmp stays visible in it.
            if str(REPO).startswith("/tmp/"):
                sh(["mount", "--bind", "/tmp", "/mnt"])
                sh(["mount", "-t", "tmpfs", "tmpfs", "/tmp"])
                REPO.mkdir(parents=True)
                sh(["mount", "--bind", f"/mnt/{REPO.relative_to('/tmp')}", str(REPO)])
            else:
                sh(["mount", "-t", "tmpfs", "tmpfs", "/tmp"])
            p, snap, took = fn(*args)
            result = {"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "snap": sorted(map(list, snap)),
                      "took": took}
        except Exception as e:  # reported by the parent, never continued in the child
            result = {"error": f"{type(e).__name__}: {e}"}
            code = 1
        os.write(w, json.dumps(result).encode())
        os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    result = json.loads(data)
    if "error" in result:
        raise Fail(result["error"])
    return result


def main():
    image, bare = sys.argv[1], os.path.abspath(sys.argv[2])
    ref = in_namespaces(one, "bare", image, bare)
    if ref["code"] != 0 or "Deleted: vm-a1b2c3d4" not in ref["stdout"]:
        raise Fail(f"the bare run: {ref['stdout']}{ref['stderr']}")
    left = {tuple(x) for x in ref["snap"]}
    if ("vmm", "/tmp/fc-vm-a1b2c3d4.sock", True) in left or ("vmm", "/tmp/fc-sbx-noether.sock", False) in left:
        raise Fail("the bare run stopped the wrong VMMs")
    print(f"ci/image: bare binary: exit 0, {ref['stdout'].count('Deleted:')} VMs deleted, {ref['took'] * 1000:.0f} ms")
    ds_caps, _ = daemonset()
    runs = [("docker-run", None), ("daemonset", None)]
    runs += [("daemonset", [c for c in ds_caps if c != drop]) for drop in ds_caps]
    for how, caps in runs:
        r = in_namespaces(one, how, image, bare, caps)
        snap = {tuple(x) for x in r["snap"]}
        label = how if caps is None else f"daemonset without CAP_{sorted(set(ds_caps) - set(caps))[0]}"
        if caps is None:
            if (r["code"], r["stdout"]) != (ref["code"], ref["stdout"]) or snap != left:
                diff = sorted(map(str, snap ^ left))[:6]
                raise Fail(f"{label}: exit {r['code']}, {r['stdout']}{r['stderr']} differs from the bare run: {diff}")
            print(f"ci/image: {label}: the same as the bare run (exit 0, same output, same world), "
                  f"{r['took'] * 1000:.0f} ms start to exit")
        else:
            missing = sorted(set(ds_caps) - set(caps))[0]
            first = r["stdout"].splitlines()[0] if r["stdout"] else ""
            if f"without CAP_{missing}" not in first:
                raise Fail(f"{label}: the run does not say which capability is missing: {r['stdout']}")
            print(f"ci/image: {label}: says so (exit {r['code']}): {first[:100]}…")


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("ci/image.d/run.py: run as root")
    try:
        main()
    except Fail as e:
        print(f"ci/image: FAILED: {e}")
        sys.exit(1)
