"""Real QEMU guests, started by a SmolVM or Celesto release's own code, through cleanup.
Run by ci/guests in a private network and mount namespace (its own /tmp):

    check.py assets <dir>                                   kernel, initrd, rootfs, QEMU probe
    check.py release <bin> <module> <version> <python> <assets> <work>
    check.py bench <bin> <module> <version> <python> <assets> <work>

`assets` takes the kernel from Debian's linux-image-amd64 (downloaded and unpacked, not
installed), builds a busybox initramfs whose /init prints one line and sleeps, an ext4
rootfs, and finds how QEMU runs here: KVM with `-cpu host`, KVM without the
arch-capabilities MSR (this nested KVM refuses it: a shim on PATH rewrites `-cpu host`),
or TCG when /dev/kvm does not work. It prints which.

`release` runs the scenarios, each checked against the world (links, nft objects,
files, rows) and with the release creating and starting a VM again afterwards:

  1. a VM running normally (a `vm-` id and a custom one): `--dry-run` changes nothing,
     the default run takes the `vm-` VM whole and keeps the other running, `--check`
     then finds nothing to take;
  2. SmolVM's own process SIGKILLed after start: its VMM lives on, orphaned; the default
     run keeps it (alive), `--all` stops it;
  3. the VMM SIGKILLed (the row says running): stale, taken whole;
  4. the VMM SIGSTOPped (wedged): `--all --grace 1s` finishes in bounded time;
  5. (0.0.30+, Celesto) SDK VMs with no row: one whose owner and VMM died is taken by
     the default run, a live one whose owner died only by `--all`, whole;
  6. eight VMMs stopped in one `--all`: how long that takes, and how long QEMU takes to
     exit after SIGTERM (the `--grace` default must fit it);
  7. a VMM SIGKILLed a moment before the run (still exiting): taken whole, said.

Prints one line; exits 1 naming what was left or taken.

`bench` (ci/bench-guests) times `--all` on N = 1 and 8 running VMs, real QEMU guests the
release started and, beside them, the stand-in Firecracker on rows the release made
(`make.py`), 3 runs each, medians.
"""
import gzip
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("compat", HERE.parent / "compat.d" / "check.py")
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)
Fail, run, show, snapshot, uplink = compat.Fail, compat.run, compat.show, compat.snapshot, compat.uplink

QEMU = "/usr/bin/qemu-system-x86_64"
INIT = b"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
echo "smolvm-guest: booted"
while :; do /bin/busybox sleep 3600; done
"""


def newc(entries):
    """A gzipped cpio archive (newc) of (name, mode, data) entries."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        n = name.encode() + b"\0"
        out.write(b"070701" + b"".join(b"%08X" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0)) + n)
        out.write(b"\0" * (-(110 + len(n)) % 4) + data + b"\0" * (-len(data) % 4))
    return gzip.compress(out.getvalue())


def kernel(dest):
    """Debian's kernel image (linux-image-amd64's dependency), unpacked from its .deb."""
    pkg = next(line.split()[1] for line in run(["apt-cache", "depends", "linux-image-amd64"]).stdout.splitlines()
               if line.strip().startswith("Depends:"))
    cache = dest / "cache"
    cache.mkdir(exist_ok=True)
    debs = list(cache.glob(f"{pkg}_*.deb"))
    if not debs:
        download = ["apt-get", "download", "-qq", pkg]
        if subprocess.run(download, cwd=cache, capture_output=True).returncode != 0:
            run(["apt-get", "update", "-qq"])  # package lists not there yet
            subprocess.run(download, cwd=cache, check=True, capture_output=True)
        debs = list(cache.glob(f"{pkg}_*.deb"))
    unpacked = dest / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir()
    subprocess.run(f"dpkg-deb --fsys-tarfile '{debs[0]}' | tar -x -C '{unpacked}' ./boot", shell=True, check=True)
    shutil.copy(next((unpacked / "boot").glob("vmlinuz-*")), dest / "vmlinuz")
    shutil.rmtree(unpacked)
    return pkg


def probe(dest, cpu, accel):
    """Does QEMU run a guest here with this CPU and accelerator (alive after 2 s)?"""
    p = subprocess.Popen([QEMU, "-M", f"microvm,accel={accel}", "-cpu", cpu, "-m", "128", "-nodefaults",
                          "-no-user-config", "-display", "none", "-kernel", dest / "vmlinuz",
                          "-append", "console=ttyS0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(2)
    alive = p.poll() is None
    p.kill()
    p.wait()
    return alive


def assets(dest):
    dest.mkdir(parents=True, exist_ok=True)
    pkg = kernel(dest) if not (dest / "vmlinuz").exists() else "cached"
    busybox = Path("/bin/busybox")
    if "statically linked" not in run(["file", "-L", busybox]).stdout:
        raise Fail("/bin/busybox is not static (Debian's busybox-static): the initramfs has no libc")
    busybox = busybox.read_bytes()
    entries = [("bin", 0o40755, b""), ("dev", 0o40755, b""), ("proc", 0o40755, b""),
               ("bin/busybox", 0o100755, busybox), ("init", 0o100755, INIT)]
    (dest / "initrd.img").write_bytes(newc(entries))
    rootfs = dest / "rootfs.ext4"
    rootfs.unlink(missing_ok=True)
    run(["truncate", "-s", "16M", rootfs])
    run(["mkfs.ext4", "-q", "-F", rootfs])
    shim = dest / "bin" / "qemu-system-x86_64"
    shutil.rmtree(shim.parent, ignore_errors=True)
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if kvm and probe(dest, "host", "kvm"):
        how = "KVM"
    elif kvm and probe(dest, "host,-arch-capabilities", "kvm"):
        how = "KVM (-cpu host without the arch-capabilities MSR, which this nested KVM refuses)"
        rewrite = '[ "$a" = host ] && a=host,-arch-capabilities'
    else:
        how = "TCG (no usable /dev/kvm)"
        rewrite = '[ "$a" = host ] && a=max; a=$(echo "$a" | sed s/accel=kvm/accel=tcg/)'
    if how != "KVM":
        shim.parent.mkdir()
        shim.write_text(f"""#!/bin/sh
# The same QEMU, as this host can run it: {how}.
for a; do shift; {rewrite}; set -- "$@" "$a"; done
exec {QEMU} "$@"
""")
        shim.chmod(0o755)
    (dest / "how").write_text(how)
    print(f"guest assets: {pkg} kernel, busybox initramfs, ext4 rootfs; QEMU with {how}")


class Guests:
    """One release, its data dir and the guests it starts."""

    def __init__(self, bin_, module, version, py, dest, work):
        self.bin, self.module, self.version, self.py = bin_, module, version, py
        self.rel = compat.Release(module, version, py, work)
        shim = dest / "bin"
        path = f"{shim}:{os.environ['PATH']}" if shim.is_dir() else os.environ["PATH"]
        self.rel.env.update(GUEST_ASSETS=str(dest), PATH=path)
        self.dirs = [self.rel.data, Path("/tmp"), work / "home"]
        # Every VMM and owner started, killed at the end whatever happened: a failed
        # check leaves no guest running.
        self.started = []

    def kill_all(self):
        for pid in self.started:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def guest(self, op, vid, hold=False):
        """Starts a VM with the release's code: (its VMM pid, the process that started it
        when it holds on)."""
        cmd = [self.py, HERE / "guest.py", self.module, op, vid] + (["--hold"] if hold else [])
        p = subprocess.Popen(cmd, env=self.rel.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(p.pid)
        line = p.stdout.readline().strip()
        if not line.isdigit():
            p.kill()
            raise Fail(f"{self.module} {op} {vid} did not start: {line} {p.stderr.read()[-2000:]}")
        self.started.append(int(line))
        if not hold:
            p.wait()
        return int(line), (p if hold else None)

    def has_sdk(self):
        return run([self.py, HERE / "guest.py", self.module, "has", "sdk"], env=self.rel.env,
                   check=False).returncode == 0

    def world(self):
        return snapshot(self.dirs, [self.rel.db()])

    def cleanup(self, *args, code=0):
        """A run of cleanup; its exit code must be `code` (None: any)."""
        if code is None:
            return run([self.bin, *args], env=self.rel.env, check=False)
        return compat.cleanup(self.bin, self.rel.env, *args, code=code)


def alive(pid):
    """Running, or still exiting (a zombie leader whose other threads have not finished:
    they may hold its TAP)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False
    return state not in ("Z", "X") or threads > 1


def gone(pids, within=10.0):
    until = time.monotonic() + within
    while any(alive(p) for p in pids):
        if time.monotonic() > until:
            raise Fail(f"VMM still running: {[p for p in pids if alive(p)]}")
        time.sleep(0.01)


def qemu_of(pid):
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if not cmd[0].endswith(b"qemu-system-x86_64"):
        raise Fail(f"pid {pid} is not QEMU: {cmd[:3]}")
    return [c.decode() for c in cmd if c]


def changed(before, after):
    """What differs, ignoring directories the release makes for its layout."""
    diff = before ^ after
    return {o for o in diff if not (o[0] == "file" and Path(o[1]).is_dir())}


def release(bin_, module, version, py, dest, work):
    uplink()
    g = Guests(bin_, module, version, py, dest, work)
    try:
        return scenarios(g, module, version, dest)
    finally:
        g.kill_all()


def scenarios(g, module, version, dest):
    # The command lines the release builds: QEMU's from the running VMM; Firecracker's
    # from its own launcher with a recording stand-in (none can be had here). The
    # stand-ins of tests/util/fake_vmm.rs run exactly these shapes.
    fc = json.loads(run([g.py, HERE / "guest.py", g.module, "fc-argv", "sbx-fc"], env=g.rel.env).stdout)
    if fc[1:] != ["--api-sock", "/tmp/fc-sbx-fc.sock"] or not fc[0].endswith("/firecracker"):
        raise Fail(f"the release's Firecracker command line is not the stand-in's: {fc}")
    # 1. Running normally: a custom id is kept, a vm- id is a --prefix target.
    keep_pid, _ = g.guest("start", "sbx-run")
    argv = qemu_of(keep_pid)
    shape = [a for a in argv if a.startswith(("unix:/tmp/qmp-sbx-run.sock,", "file=", "tap,"))]
    want = [f"file={g.rel.data}/disks/sbx-run.qcow2,if=none,format=qcow2,id=rootdisk0-drive,node-name=rootdisk0",
            "tap,id=net0,ifname=tap2,script=no,downscript=no", "unix:/tmp/qmp-sbx-run.sock,server=on,wait=off"]
    if shape != want:
        raise Fail(f"the release's QEMU command line is not the stand-in's: {argv}")
    kept = g.world()
    vm_pid, _ = g.guest("start", "vm-run")
    full = g.world()
    g.cleanup("--dry-run")
    if g.world() != full or not alive(vm_pid) or not alive(keep_pid):
        raise Fail(f"--dry-run changed: {show(changed(full, g.world()))}")
    out = g.cleanup().stdout
    if out != "Targets (1):\n  - vm-run\nDeleted: vm-run\nCleanup complete.\n":
        raise Fail(f"the default run on two running VMs: {out}")
    gone([vm_pid])
    if changed(kept, g.world()) or not alive(keep_pid):
        raise Fail(f"the default run did not take exactly vm-run: {show(changed(kept, g.world()))}")
    g.cleanup("--check")

    # 3. The VMM SIGKILLed: its row says running, it is stale and goes whole.
    dead_pid, _ = g.guest("start", "sbx-crash")
    os.kill(dead_pid, signal.SIGKILL)
    gone([dead_pid])
    out = g.cleanup().stdout
    if "Reconciled stale VMs: sbx-crash\n" not in out or "Deleted: sbx-crash\n" not in out:
        raise Fail(f"a VM whose VMM was killed: {out}")
    if changed(kept, g.world()):
        raise Fail(f"left of the killed VM: {show(changed(kept, g.world()))}")

    # 7. The VMM SIGKILLed a moment before the run: it is still exiting, holding its TAP.
    dying_pid, _ = g.guest("start", "sbx-dying")
    os.kill(dying_pid, signal.SIGKILL)
    r = g.cleanup(code=None)
    if r.returncode != 0 or "Deleted: sbx-dying\n" not in r.stdout or changed(kept, g.world()):
        raise Fail(f"a VMM killed a moment before the run: exit {r.returncode}: {r.stdout}{r.stderr}; "
                   f"left: {show(changed(kept, g.world()))}")
    if "pid namespace" in r.stderr:
        raise Fail(f"a dying VMM was blamed on the pid namespace: {r.stderr}")
    said = "exiting" if f"its VMM pid {dying_pid} is exiting" in r.stderr else "gone by then"

    # 2. SmolVM's own process killed after start: the VMM lives on, orphaned.
    orphan_pid, owner = g.guest("start", "sbx-orphan", hold=True)
    owner.kill()
    owner.wait()
    time.sleep(0.2)
    if not alive(orphan_pid):
        raise Fail("the VMM died with the process that started it")
    out = g.cleanup().stdout
    if out != "No matching VMs to clean.\n" or not alive(orphan_pid) or not alive(keep_pid):
        raise Fail(f"the default run with an orphaned live VMM: {out}")

    # 4. A wedged VMM (SIGSTOP); then --all takes the live, orphaned and wedged VMs, in
    # bounded time, whole.
    wedged_pid, _ = g.guest("start", "sbx-wedged")
    os.kill(wedged_pid, signal.SIGSTOP)
    t = time.monotonic()
    g.cleanup("--all", "--grace", "1s", "--timeout", "30s")
    took = time.monotonic() - t
    gone([keep_pid, orphan_pid, wedged_pid])
    if took > 8:
        raise Fail(f"--all with a wedged VMM took {took:.1f} s")
    g.cleanup("--check", "--all")
    if leftovers(g):
        raise Fail(f"--all left: {show(leftovers(g))}")

    # 5. SDK VMs with no row (SmolVM 0.0.30+, Celesto), alone: the SDK's allocator does not
    # see the CLI's ports (SmolVM's own collision), so no CLI VM runs beside them.
    sdk = g.has_sdk()
    if sdk:
        before = g.world()
        pid, owner = g.guest("sdk", "sbx-sdkdead", hold=True)
        owner.kill()
        owner.wait()
        os.kill(pid, signal.SIGKILL)
        gone([pid])
        r = g.cleanup("-v")
        if "Deleted: sbx-sdkdead\n" not in r.stdout or leftovers(g):
            raise Fail(f"a dead SDK VM with no row: {r.stdout}{r.stderr}; left: {show(leftovers(g))}")
        pid, owner = g.guest("sdk", "sbx-sdklive", hold=True)
        owner.kill()
        owner.wait()
        out = g.cleanup().stdout
        if out != "No matching VMs to clean.\n" or not alive(pid):
            raise Fail(f"a live SDK VM with no row was taken by the default run: {out}")
        g.cleanup("--all")
        gone([pid])
        if leftovers(g):
            raise Fail(f"--all left of the live SDK VM: {show(leftovers(g))}")

    # 6. Eight VMMs at once; and QEMU's own exit time after SIGTERM.
    pids = [g.guest("start", f"vm-many{i}")[0] for i in range(8)]
    t = time.monotonic()
    g.cleanup("--all")
    many = time.monotonic() - t
    gone(pids)
    one, _ = g.guest("start", "vm-term")
    t = time.monotonic()
    os.kill(one, signal.SIGTERM)
    gone([one])
    term = time.monotonic() - t
    if term > 3:
        raise Fail(f"QEMU took {term:.2f} s to exit after SIGTERM: more than the 3 s --grace default")
    g.cleanup("--all")

    # SmolVM creates and starts again: nothing of the taken VMs is in its way.
    again, _ = g.guest("start", "sbx-again")
    g.cleanup("--all")
    gone([again])
    if leftovers(g):
        raise Fail(f"--all left: {show(leftovers(g))}")
    scen = "1-7" if sdk else "1-4, 6, 7"
    print(f"{module} {version}: ok ({(dest / 'how').read_text()}; scenarios {scen}; the VMM killed an "
          f"instant before the run: {said}, taken whole; 8 VMMs stopped and cleaned in {many:.2f} s; QEMU "
          f"exits {term * 1000:.0f} ms after SIGTERM; started a VM again)")
    print(f"  {module} {version} QEMU: {' '.join(argv)}")
    print(f"  {module} {version} Firecracker (its own launcher, a recording stand-in): {' '.join(fc)}")


def bench(bin_, module, version, py, dest, work):
    uplink()
    g = Guests(bin_, module, version, py, dest, work)
    try:
        for n in (1, 8):
            for kind in ("real QEMU", "stand-in"):
                times = []
                for r in range(3):
                    ids = [f"vm-b{r}x{i}" for i in range(n)]
                    if kind == "real QEMU":
                        pids = [g.guest("start", vid)[0] for vid in ids]
                    else:
                        g.rel.make("create", *ids)
                        pids = [compat.live_vm(g.rel, vid).pid for vid in ids]
                        g.started.extend(pids)
                    t = time.monotonic()
                    g.cleanup("--all")
                    times.append(time.monotonic() - t)
                    gone(pids)
                    if leftovers(g):
                        raise Fail(f"--all left: {show(leftovers(g))}")
                times.sort()
                print(f'guests_stop_and_clean_seconds{{release="{module} {version}",vmm="{kind}",n="{n}",'
                      f'stat="median",runs="3"}} {times[1]:.4f}', flush=True)
    finally:
        g.kill_all()


def leftovers(g):
    """What of SmolVM's is still there: TAPs, elements, rules, rows, VM files."""
    return {o for o in g.world()
            if o[0] in ("tap", "elem") or (o[0] == "rule" and "global" not in o[5] and "map:" not in o[5])
            or (o[0] == "row" and o[2] in ("vms", "ip_leases"))
            or (o[0] == "file" and not Path(o[1]).is_dir()
                and (str(g.rel.data) in o[1] or ".sock" in o[1])
                and not o[1].endswith(("vmlinux.bin", "rootfs.ext4")))}


if __name__ == "__main__":
    try:
        if sys.argv[1] == "assets":
            assets(Path(sys.argv[2]))
        elif sys.argv[1] == "bench":
            bench(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], Path(sys.argv[6]), Path(sys.argv[7]))
        else:
            release(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], Path(sys.argv[6]), Path(sys.argv[7]))
    except Fail as e:
        print(f"{' '.join(sys.argv[3:5])}: FAILED: {e}")
        sys.exit(1)
