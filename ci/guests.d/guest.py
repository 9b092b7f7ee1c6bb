"""Starts real QEMU guests with a SmolVM or Celesto release's own code (run by that
release's venv python). Called by check.py:

    guest.py <module> start <id> [--hold]   the CLI's VM (a row; SmolVM <= 0.0.29: the
                                            SDK's, which wrote rows itself): create, start
    guest.py <module> sdk <id> [--hold]     an SDK VM (0.0.30+, Celesto: no row)
    guest.py <module> fc-argv <id>          the command line the release's own
                                            `_start_firecracker` runs (a recording
                                            stand-in as the binary), as JSON
    guest.py <module> has <feature>         exit 0 when the release has it (sdk)

Prints the VMM's pid once `start()` returns (SmolVM waits for QMP, not for SSH). With
--hold the process then stays, as a program using the SDK would, until it is killed.
The kernel, initrd and rootfs come from GUEST_ASSETS; the data dir from the project's
own variable (SMOLVM_DATA_DIR, CELESTO_DATA_DIR).
"""
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

mod, op, args = sys.argv[1], sys.argv[2], sys.argv[3:]
types = importlib.import_module(f"{mod}.types")
assets = Path(os.environ["GUEST_ASSETS"])
data = Path(os.environ[f"{mod.upper()}_DATA_DIR"])
data.mkdir(parents=True, exist_ok=True)
FIELDS = types.VMConfig.model_fields


def config(vid):
    extra = {}
    if "qemu_network" in FIELDS:
        extra["qemu_network"] = "tap"  # 0.0.18+: a TAP, the host's nft rules
    if "comm_channel" in FIELDS:
        extra["comm_channel"] = "ssh"  # vsock needs /dev/vhost-vsock
    return types.VMConfig(vm_id=vid, backend="qemu", kernel_path=assets / "vmlinuz",
                          initrd_path=assets / "initrd.img", rootfs_path=assets / "rootfs.ext4", **extra)


def cli_manager(backend="qemu"):
    try:
        service = importlib.import_module(f"{mod}.cli.service")
    except ModuleNotFoundError:
        return None
    return service.CLIService(data_dir=data).manager(backend=backend)


def sdk_manager(backend="qemu"):
    vm = importlib.import_module(f"{mod}.vm")
    manager = getattr(vm, "CelestoManager", None) or getattr(vm, "SmolVMManager")
    return manager(data_dir=data, backend=backend)


def firecracker_argv(vid):
    """No Firecracker can be had here: the release's own launcher runs a stand-in that
    records its command line and exits."""
    stub = assets / f"fc-recorder-{mod}" / "firecracker"
    out = stub.parent / "argv.json"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv, open({str(out)!r}, 'w'))\n")
    stub.chmod(0o755)
    mgr = cli_manager("firecracker") or sdk_manager("firecracker")
    mgr.host.find_firecracker = lambda: stub
    log = data / f"{vid}.log"
    mgr._start_firecracker(Path(f"/tmp/fc-{vid}.sock"), log).wait()
    log.unlink(missing_ok=True)
    return json.loads(out.read_text())


if op == "has":
    if args[0] == "sdk":  # the SDK keeps no rows (SmolVM 0.0.30+, Celesto)
        sys.exit(0 if importlib.util.find_spec(f"{mod}.cli.service") else 1)
    sys.exit(1)
vid = args[0]
if op == "fc-argv":
    print(json.dumps(firecracker_argv(vid)))
    sys.exit(0)
mgr = (cli_manager() or sdk_manager()) if op == "start" else sdk_manager()
mgr.create(config(vid))
info = mgr.start(vid)
print(info.pid, flush=True)
if "--hold" in args:
    while True:
        time.sleep(3600)
