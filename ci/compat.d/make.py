"""Makes VM state with a SmolVM or Celesto release's own code (run by that release's
venv python; no hypervisor: host setup only). Called by check.py:

    make.py <module> create <id>...     CLI-service VMs: row, TAP, nft state, files
    make.py <module> set <id> <status> [<pid>]
    make.py <module> sdk <id>           an SDK VM over vsock: no row (state in this
                                        process, gone when it exits, as when its owner dies)

The data dir comes from the project's own variable (SMOLVM_DATA_DIR, CELESTO_DATA_DIR).
"""
import importlib
import os
import sys
from pathlib import Path

mod, op, args = sys.argv[1], sys.argv[2], sys.argv[3:]
types = importlib.import_module(f"{mod}.types")
data = Path(os.environ[f"{mod.upper()}_DATA_DIR"])
data.mkdir(parents=True, exist_ok=True)
kernel, rootfs = data / "vmlinux.bin", data / "rootfs.ext4"
for f in (kernel, rootfs):
    if not f.exists():
        f.write_bytes(b"boot asset")


def config(vid, comm="ssh"):
    extra = {"comm_channel": comm} if "comm_channel" in types.VMConfig.model_fields else {}
    return types.VMConfig(vm_id=vid, kernel_path=kernel, rootfs_path=rootfs, **extra)


def cli():
    """The CLI's SQLite-backed service (0.0.30+: the SDK itself keeps no rows); None
    before that, when the SDK's manager wrote the rows itself."""
    try:
        service = importlib.import_module(f"{mod}.cli.service")
    except ModuleNotFoundError:
        return None
    return service.CLIService(data_dir=data)


def sdk_manager():
    vm = importlib.import_module(f"{mod}.vm")
    manager = getattr(vm, "CelestoManager", None) or getattr(vm, "SmolVMManager")
    return manager(data_dir=data, backend="firecracker")


if op == "create":
    service = cli()
    mgr = service.manager(backend="firecracker") if service else sdk_manager()
    for vid in args:
        mgr.create(config(vid))
elif op == "set":
    vid, status = args[0], getattr(types.VMState, args[1].upper())
    pid = int(args[2]) if len(args) > 2 else None
    service = cli()
    state = service.state_manager() if service else sdk_manager().state
    state.update_vm(vid, status=status, pid=pid)
elif op == "sdk":
    # Over vsock: the SDK's port allocator does not see the CLI's SSH ports (an SSH
    # forward would collide with theirs: SmolVM's own File exists).
    sdk_manager().create(config(args[0], comm="vsock"))
else:
    sys.exit(f"make.py: unknown op {op}")
