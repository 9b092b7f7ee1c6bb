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
    check.py postgres <bin> <version> <venv-python> <work-dir>

The postgres line (0.0.8-0.0.29, `smolvm[postgres]`) runs the same steps with the rows in
a real PostgreSQL server (a throwaway cluster on a Unix socket), as host A in its own
network, mount and pid namespaces, while host B (`pg_host`, namespaces of its own) makes
VMs with the same release in the same DB: every run of A leaves B's rows byte-identical
and every process of A standing at a pid B's rows record alive; B's own `--all` then
takes exactly B's VMs, and both hosts create again.

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


class PgClient:
    """SmolVM's DB on a PostgreSQL server's Unix socket, read with psql."""

    PASSWORD = "s3cr:et@pw"

    def __init__(self, sock):
        self.sock = Path(sock)
        self.url = "postgresql://ci:s3cr%3Aet%40pw@/smolvm?host=" + str(self.sock)

    def psql(self, db, sql, check=True):
        env = {**os.environ, "PGPASSWORD": self.PASSWORD}
        return run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.sock, "-U", "ci", "-d", db,
                    "-c", sql], env=env, check=check)

    def rows(self, where=""):
        """Every row of SmolVM's tables (`where` filters by VM id), as comparable objects."""
        out = set()
        tables = self.psql("smolvm", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").stdout.split()
        for t in tables:
            key = "id" if t == "vms" else "vm_id"
            cond = f" WHERE {key} {where}" if where else ""
            for line in self.psql("smolvm", f"SELECT x::text FROM {t} x{cond}").stdout.splitlines():
                out.add(("row", "postgres", t, line))
        return out


class Pg(PgClient):
    """A throwaway PostgreSQL cluster (Debian's server, run as `postgres`) listening only
    on a Unix socket under `work`, with SCRAM logins, as SmolVM's DB."""

    def __init__(self, work):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        super().__init__(work / "pg" / "sock")
        if not bins:
            raise Fail("no PostgreSQL server in /usr/lib/postgresql (Debian's postgresql package)")
        self.bin = bins[-1].parent
        self.dir = work / "pg"
        self.sock.mkdir(parents=True)
        (self.dir / "pw").write_text(self.PASSWORD)
        run(["chown", "-R", "postgres:postgres", self.dir])
        self.as_pg(self.bin / "initdb", "-D", self.dir / "data", "-U", "ci", "--pwfile", self.dir / "pw",
                   "--auth=scram-sha-256", "--no-sync")
        self.server = subprocess.Popen(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", self.bin / "postgres",
             "-D", self.dir / "data", "-k", self.sock, "-c", "listen_addresses=", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "w"))
        for _ in range(300):
            if self.psql("postgres", "SELECT 1", check=False).returncode == 0:
                break
            subprocess.run(["sleep", "0.1"])
        self.psql("postgres", "CREATE DATABASE smolvm")

    def as_pg(self, *cmd):
        run(["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *cmd])

    def stop(self):
        self.server.terminate()
        self.server.wait()


class Release:
    """One release's venv, its data dir (named by its own variable) and home; with `pg`,
    its rows are in that PostgreSQL server (`SMOLVM_DATABASE_URL`)."""

    def __init__(self, module, version, py, work, pg=None):
        self.module, self.version, self.py, self.pg = module, version, py, pg
        self.data = work / module
        self.env = {**os.environ, f"{module.upper()}_DATA_DIR": str(self.data), "HOME": str(work / "home")}
        if pg:
            self.env["SMOLVM_DATABASE_URL"] = pg.url

    def make(self, *args):
        return run([self.py, HERE / "make.py", self.module, *args], env=self.env)

    def db(self):
        return self.data / f"{self.module}.db"

    def tap(self, vid):
        if self.pg:
            return self.pg.psql("smolvm", f"SELECT tap_device FROM ip_leases WHERE vm_id = '{vid}'").stdout.strip()
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


def standin_binary():
    """The stand-in Firecracker (standin.c), built once under target/ with the C compiler."""
    out = REPO / "target" / "standin" / "firecracker"
    src = HERE / "standin.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Releases are checked in parallel: each builds its own copy and renames it into
        # place, so no check runs a half-written binary (EACCES before the linker's chmod).
        tmp = out.with_name(f"firecracker.{os.getpid()}")
        run(["cc", "-O2", "-static", "-o", tmp, src])
        os.replace(tmp, out)
    return out


def standin(vid, tap, **popen):
    """A stand-in VMM for `vid`, run as SmolVM runs Firecracker, holding `tap` and serving
    /tmp/fc-<vid>.sock (`popen`: a user to run as, an fd of /dev/net/tun to pass)."""
    env = {**os.environ, "SMOLVM_STANDIN_TAP": tap, **popen.pop("env", {})}
    p = subprocess.Popen([standin_binary(), "--api-sock", f"/tmp/fc-{vid}.sock"], env=env,
                         stdout=subprocess.PIPE, text=True, **popen)
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
        if isinstance(db, PgClient):
            out |= db.rows()
        elif db.exists():
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


def release(bin_, module, version, epoch, py, work, pg=None, theirs=frozenset()):
    """One release's run as above; with `pg`, its rows in that server, where `theirs` are
    another host's rows that every run must leave as they are."""
    uplink()
    rel = Release(module, version, py, work, pg)
    dirs, dbs = [rel.data, Path("/tmp"), work / "home"], [pg or rel.db()]
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
    left = {o for o in final - stays - theirs if o[0] != "row" or o[2] == "vms" or o[2] == "ip_leases"}
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
    return (f"{module} {version} ({epoch}): ok ({what}: {n} objects removed, 2 kept VMs untouched; "
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


B_IDS = ("sbx-b-keep", "sbx-b-live", "sbx-b-crash", "vm-b-target")
B_WHERE = "IN (" + ", ".join(f"'{i}'" for i in B_IDS) + ")"


def pg_host(bin_, version, py, work, sock):
    """Host B, in network, mount and pid namespaces of its own (`postgres` starts it): its
    own uplink, /tmp and data dir, the same release writing to the same DB. Takes
    commands on stdin, one per line, and answers each with one JSON line:
    `make` (B's VMs: kept, live, stale, prefixed), `alive`, `cleanup ARGS...` (B's own
    run of cleanup, then what is left of B's TAPs and tables), `create ID`, `quit`."""
    uplink()
    rel = Release("smolvm", version, py, work, PgClient(sock))
    live = None
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "make":
            rel.make("create", *B_IDS)
            rel.make("set", "sbx-b-keep", "stopped")
            rel.make("set", "sbx-b-crash", "running", str(dead_pid()))
            live = live_vm(rel, "sbx-b-live")
            answer = {"live": live.pid}
        elif cmd == "alive":
            answer = {"alive": live.poll() is None}
        elif cmd == "cleanup":
            p = run([bin_, *args], env=rel.env, check=False)
            answer = {"code": p.returncode, "out": p.stdout + p.stderr, "taps": sorted(taps()),
                      "ruleset": run(["nft", "list", "ruleset"]).stdout.strip(),
                      "live_stopped": live.poll() is not None}
        elif cmd == "create":
            answer = {"code": run([rel.py, HERE / "make.py", "smolvm", "create", *args], env=rel.env,
                                  check=False).returncode}
        else:
            break
        print(json.dumps(answer), flush=True)


def occupy(pid):
    """A process of ours at `pid` in this pid namespace: the one there, or a `sleep`
    started there (ns_last_pid). Returns (pid, its start time), or None if it cannot."""
    def started(p):
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except OSError:
            return None
    if started(pid) is None:
        for _ in range(5):
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
            p = subprocess.Popen(["sleep", "3600"])
            if p.pid == pid:
                break
            p.kill()
            p.wait()
    t = started(pid)
    return (pid, t) if t else None


def postgres(bin_, version, py, work):
    """Two hosts sharing one SmolVM DB in PostgreSQL (see the module's doc)."""
    pg = Pg(work)
    # Host B's own /tmp; a checkout under /tmp (bound into ours) is bound back into it,
    # with its submounts (--rbind).
    b = subprocess.Popen(
        ["unshare", "-n", "-m", "-p", "-f", "--mount-proc", "sh", "-c", """
            top=$1; shift
            case $top in
                /tmp/*) mount --rbind /tmp /mnt && mount -t tmpfs tmpfs /tmp &&
                    mkdir -p "$top" && mount --bind "/mnt/${top#/tmp/}" "$top" ;;
                *) mount -t tmpfs tmpfs /tmp ;;
            esac && exec python3 "$@" """, "host-b", str(REPO), __file__, "pg-host", bin_, version, py,
         str(work / "host-b"), str(pg.sock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(*cmd):
        b.stdin.write(" ".join(cmd) + "\n")
        b.stdin.flush()
        line = b.stdout.readline()
        if not line:
            raise Fail(f"host B did not answer {cmd[0]}")
        return json.loads(line)

    try:
        ask("make")
        theirs = pg.rows(B_WHERE)
        pids = [int(x) for x in pg.psql("smolvm", f"SELECT pid FROM vms WHERE id {B_WHERE} AND pid IS NOT NULL")
                .stdout.split()]
        # Processes of host A at the very pids B's rows record: never to be signalled.
        held = [o for o in map(occupy, pids) if o]
        line = release(bin_, "smolvm", version, "E5" if version == "0.0.8" else "E14", py, work, pg, theirs)
        if pg.rows(B_WHERE) != theirs:
            raise Fail(f"host A's runs changed host B's rows: {show(pg.rows(B_WHERE) ^ theirs)}")
        for pid, started in held:
            try:
                now = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
            except OSError:
                now = None
            if now != started:
                raise Fail(f"host A's process at pid {pid}, which host B's rows record, was stopped")
        if not ask("alive")["alive"]:
            raise Fail("host B's live VM lost its VMM")
        # B's own --all takes exactly B's VMs.
        done = ask("cleanup", "--all")
        if done["code"] != 0 or done["taps"] or done["ruleset"] or not done["live_stopped"]:
            raise Fail(f"host B's own --all: {done}")
        if pg.rows():
            raise Fail(f"rows left after both hosts' --all: {show(pg.rows())}")
        if ask("create", "sbx-b-again")["code"] != 0:
            raise Fail("host B cannot create a VM again")
        Release("smolvm", version, py, work, pg).make("create", "sbx-a-again")
        print(f"{line.replace(': ok (', ' in PostgreSQL: ok (', 1)[:-1]}; two hosts in one DB: "
              f"host B's {len(theirs)} rows byte-identical and {len(held)} processes at their pids "
              "untouched after every run of host A, then B's own --all took exactly B's)")
    finally:
        b.stdin.close()
        b.wait(timeout=30)
        pg.stop()


if __name__ == "__main__":
    try:
        if sys.argv[1] == "release":
            print(release(*sys.argv[2:7], Path(sys.argv[7])))
        elif sys.argv[1] == "postgres":
            postgres(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
        elif sys.argv[1] == "pg-host":
            pg_host(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]), sys.argv[6])
        else:
            mixed(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
    except Fail as e:
        what = f"smolvm {sys.argv[3]} in PostgreSQL" if sys.argv[1] == "postgres" else " ".join(sys.argv[3:5])
        print(f"{what}: FAILED: {e}")
        sys.exit(1)
