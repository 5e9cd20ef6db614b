"""Drive a pod's whole life through ``kata-agent-ctl``, in the order the Kata runtime calls.

Usage: python3 examples/pod.py ADDRESS SHARE_DIR [RUNTIME_NOTE]

SHARE_DIR plays the host side of Kata's virtio-fs share: the container's
busybox rootfs is built in ``SHARE_DIR/demo-app/rootfs`` and the share is
handed to the agent as a sandbox storage mounted at
``/run/kata-containers/shared/containers``, exactly where a guest finds it.
Each step prints the command a person would type, then the agent's answer
(bytes fields come back base64-encoded in JSON; the text is shown decoded).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SHARED = "/run/kata-containers/shared/containers"
CID = "demo-app"
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def ctl(addr: str, method: str, request: dict | None = None, check: bool = True, quiet: bool = False) -> dict:
    text = json.dumps(request or {})
    shown = text if len(text) < 160 else text[:150] + " …}"
    print(f"$ kata-agent-ctl call {method} '{shown}'")
    args = ["kata-agent-ctl", "--addr", addr, "--timeout", "60", "call", method, text]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    answer = (out.stdout or out.stderr).strip()
    if not quiet:
        print("  " + answer.replace("\n", "\n  "))
    if out.returncode != 0:
        if check:
            raise SystemExit(f"step {method} failed")
        return {}
    return json.loads(out.stdout or "{}")


def build_rootfs(root: Path) -> None:
    """/bin/busybox with its applet links, and the mount points a runtime expects."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (root / "bin" / applet).exists():
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")


def process(args: list[str], terminal: bool = False) -> dict:
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"]
    return {
        "Terminal": terminal,
        "User": {"UID": 0, "GID": 0},
        "Args": args,
        "Env": [PATH_ENV],
        "Cwd": "/",
        "Capabilities": {"Bounding": caps, "Effective": caps, "Permitted": caps},
        "NoNewPrivileges": True,
    }


def spec(args: list[str]) -> dict:
    """An OCI spec as the Kata runtime sends it (protobuf JSON: the contract's CamelCase names)."""
    return {
        "Version": "1.0.2",
        "Process": process(args),
        "Root": {"Path": f"{SHARED}/{CID}/rootfs", "Readonly": True},
        "Hostname": "demo-pod",
        "Mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        ],
        "Linux": {
            "Namespaces": [{"Type": "ipc"}, {"Type": "uts"}, {"Type": "mount"}],
            "CgroupsPath": f"/kata-demo/{CID}",
            "Resources": {"Memory": {"Limit": 64 << 20}, "Pids": {"Limit": 64}},
            "MaskedPaths": ["/proc/kcore"],
            "ReadonlyPaths": ["/proc/sys"],
        },
    }


def text(reply: dict) -> str:
    return base64.b64decode(reply.get("data", "")).decode(errors="replace")


def read_all(addr: str, exec_id: str, stream: str = "ReadStdout") -> str:
    out = []
    while True:
        reply = ctl(addr, stream, {"container_id": CID, "exec_id": exec_id, "len": 4096}, quiet=True)
        if not reply.get("data"):
            print("  (EOF)")
            return "".join(out)
        out.append(text(reply))
        print("  data: " + text(reply).rstrip().replace("\n", "\n        "))


def main() -> int:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    addr, share = sys.argv[1], Path(sys.argv[2])
    build_rootfs(share / CID / "rootfs")
    ids = {"container_id": CID}

    print("\n== the sandbox: hostname, DNS, the virtio-fs share (here a bind mount)")
    storage = {"driver": "virtio-fs", "source": str(share), "fstype": "virtiofs", "options": ["bind"]}
    ctl(
        addr,
        "CreateSandbox",
        {
            "hostname": "demo-pod",
            "sandbox_id": "demo",
            "dns": ["nameserver 192.0.2.53"],
            "storages": [{**storage, "mount_point": SHARED}],
        },
    )

    print("\n== a container: created by the OCI runtime, started, its output read")
    script = "trap 'echo got SIGTERM; exit 143' TERM; echo hello from $(hostname); while :; do sleep 1; done"
    ctl(addr, "CreateContainer", {**ids, "exec_id": CID, "OCI": spec(["sh", "-c", script])})
    ctl(addr, "StartContainer", ids)
    print(
        "  data: " + text(ctl(addr, "ReadStdout", {**ids, "exec_id": CID, "len": 4096}, quiet=True)).rstrip()
    )

    print("\n== exec a process, feed its stdin, read its output, wait for it")
    ctl(addr, "ExecProcess", {**ids, "exec_id": "upper", "process": process(["tr", "a-z", "A-Z"])})
    data = base64.b64encode(b"shout this, please\n").decode()
    ctl(addr, "WriteStdin", {**ids, "exec_id": "upper", "data": data})
    ctl(addr, "CloseStdin", {**ids, "exec_id": "upper"})
    read_all(addr, "upper")
    ctl(addr, "WaitProcess", {**ids, "exec_id": "upper"})
    ctl(addr, "ExecProcess", {**ids, "exec_id": "ps", "process": process(["ps", "-o", "pid,comm"])})
    read_all(addr, "ps")
    ctl(addr, "WaitProcess", {**ids, "exec_id": "ps"})

    print("\n== statistics, freeze and thaw, new limits")
    stats = ctl(addr, "StatsContainer", ids, quiet=True)["cgroup_stats"]
    print(
        f"  memory usage {stats['memory_stats']['usage']['usage']} bytes (limit"
        f" {stats['memory_stats']['usage']['limit']}), pids {stats['pids_stats']['current']}"
    )
    ctl(addr, "PauseContainer", ids)
    ctl(addr, "ResumeContainer", ids)
    ctl(addr, "UpdateContainer", {**ids, "resources": {"Memory": {"Limit": 128 << 20}}})

    print("\n== teardown, as the runtime does it")
    ctl(addr, "SignalProcess", {**ids, "exec_id": "", "signal": 15})
    read_all(addr, CID)
    ctl(addr, "WaitProcess", {**ids, "exec_id": CID})
    ctl(addr, "SignalProcess", {**ids, "exec_id": "", "signal": 9})
    ctl(addr, "RemoveContainer", {**ids, "timeout": 0})
    ctl(addr, "RemoveStaleVirtiofsShareMounts", {})
    ctl(addr, "DestroySandbox", {})
    print('  (the agent is PID 1 of its namespaces: it powers its "VM" off now)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
