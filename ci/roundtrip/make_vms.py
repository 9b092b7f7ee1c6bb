"""Creates VMs with the real SmolVM 0.0.36 CLI service (no hypervisor: host setup only);
an id ending in `-dead` is then recorded as running with a pid that does not exist."""
import sys
from pathlib import Path
from smolvm.cli.service import CLIService
from smolvm.types import VMConfig, VMState

data = Path(sys.argv[1])
data.mkdir(parents=True, exist_ok=True)
k, r = data / "vmlinux.bin", data / "rootfs.ext4"
k.write_bytes(b"kernel")
r.write_bytes(b"rootfs")
svc = CLIService(data_dir=data)
mgr = svc.manager(backend="firecracker")
for vid in sys.argv[2:]:
    mgr.create(VMConfig(vm_id=vid, kernel_path=k, rootfs_path=r, comm_channel="ssh"))
    print("created", vid)
    if vid.endswith("dead"):
        svc.state_manager().update_vm(vid, status=VMState.RUNNING, pid=999999)
