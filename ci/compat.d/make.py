"""Makes VM state with a SmolVM or Celesto release's own code (run by that release's
venv python; no hypervisor: host setup only). Called by check.py:

    make.py <module> create <id>...     CLI-service VMs: row, TAP, nft state, files
    make.py <module> set <id> <status> [<pid>]
    make.py <module> sdk <id>           an SDK VM over vsock: no row (state in this
                                        process, gone when it exits, as when its owner dies)
    make.py <module> bridge <id>        a bridge-mode VM on br0 (0.0.27+): TAP svmb<hex>
    make.py <module> qemu <id>          a QEMU VM: its qcow2 disk, and from 0.0.18 a TAP
    make.py <module> has <feature>      exit 0 when the release has it (bridge, qemu-tap)

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


FIELDS = types.VMConfig.model_fields


def config(vid, comm="ssh", **extra):
    if "comm_channel" in FIELDS:
        extra["comm_channel"] = comm
    return types.VMConfig(vm_id=vid, kernel_path=kernel, rootfs_path=rootfs, **extra)


def bridge_config(vid):
    extra = {"network_attachment": types.NetworkAttachmentConfig(mode="bridge", bridge="br0")}
    if "guest_managed_networking" in FIELDS:
        extra["guest_managed_networking"] = True
    return config(vid, comm="vsock", **extra)


def manager(backend="firecracker"):
    service = cli()
    return service.manager(backend=backend) if service else sdk_manager(backend)


def cli():
    """The CLI's SQLite-backed service (0.0.30+: the SDK itself keeps no rows); None
    before that, when the SDK's manager wrote the rows itself."""
    try:
        service = importlib.import_module(f"{mod}.cli.service")
    except ModuleNotFoundError:
        return None
    return service.CLIService(data_dir=data)


def sdk_manager(backend="firecracker"):
    vm = importlib.import_module(f"{mod}.vm")
    manager = getattr(vm, "CelestoManager", None) or getattr(vm, "SmolVMManager")
    return manager(data_dir=data, backend=backend)


if op == "has":
    feature = {"bridge": "network_attachment", "qemu-tap": "qemu_network"}[args[0]]
    sys.exit(0 if feature in FIELDS else 1)
elif op == "create":
    mgr = manager()
    for vid in args:
        mgr.create(config(vid))
elif op == "bridge":
    manager().create(bridge_config(args[0]))
elif op == "qemu":
    extra = {"qemu_network": "tap"} if "qemu_network" in FIELDS else {}
    manager("qemu").create(config(args[0], backend="qemu", **extra))
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
