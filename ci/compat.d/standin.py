"""A stand-in Firecracker for a live VM: started as `firecracker standin.py --api-sock
/tmp/fc-<id>.sock --tap <tap>`, it holds the VM's TAP open (TUNSETIFF, as Firecracker
does) and serves the API socket until SIGTERM."""
import ctypes
import fcntl
import signal
import socket
import struct
import sys
import time

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
# Dies with the check that started it, however that ends (PR_SET_PDEATHSIG, SIGKILL).
ctypes.CDLL(None, use_errno=True).prctl(1, 9)
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
# An fd of /dev/net/tun handed over (for a stand-in run as a user who may not open it).
tun = open(int(args["--tun-fd"]), "r+b", buffering=0) if "--tun-fd" in args else open("/dev/net/tun", "r+b", buffering=0)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22s", args["--tap"].encode(), IFF_TAP | IFF_NO_PI, b""))
api = socket.socket(socket.AF_UNIX)
api.bind(args["--api-sock"])
api.listen(8)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(3600)
