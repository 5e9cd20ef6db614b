"""Valid requests, shaped like the Kata runtime's, that seed the dispatch corpus.

``python -m tests.hardening.seeds`` rewrites ``corpus/dispatch`` (one
``Method\\0payload`` file per seed, named by content hash) and
``corpus/frames`` (raw byte streams for the frame fuzzer).  The fuzzers mutate
these; the committed files keep runs reproducible.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from typing import Any

from google.protobuf import json_format

from tests.hardening import fuzzlib
from ttrpc.frame import TYPE_DATA, TYPE_REQUEST, encode_frame, encode_header
from ttrpc.protocols import ttrpc_pb2

SHARED = "/run/kata-containers/shared/containers"
SPEC = {
    "Version": "1.0.2",
    "Process": {
        "Terminal": False,
        "User": {"UID": 0, "GID": 0},
        "Args": ["/bin/sh", "-c", "echo hello"],
        "Env": ["PATH=/bin:/usr/bin", "HOME=/root"],
        "Cwd": "/",
        "Capabilities": {"Bounding": ["CAP_KILL"], "Effective": ["CAP_KILL"], "Permitted": ["CAP_KILL"]},
        "Rlimits": [{"Type": "RLIMIT_NOFILE", "Hard": 1024, "Soft": 1024}],
        "NoNewPrivileges": True,
    },
    "Root": {"Path": f"{SHARED}/c1/rootfs", "Readonly": False},
    "Hostname": "pod",
    "Mounts": [
        {"destination": "/proc", "source": "proc", "type": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "source": "tmpfs", "type": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/etc/hosts", "source": f"{SHARED}/c1-hosts", "type": "bind", "options": ["rbind", "ro"]},
    ],
    "Annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "p1"},
    "Linux": {
        "Resources": {"Memory": {"Limit": 268435456}, "CPU": {"Shares": 1024, "Quota": 50000, "Period": 100000}},
        "CgroupsPath": "/kubepods/p1/c1",
        "Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}],
        "MaskedPaths": ["/proc/kcore"],
        "ReadonlyPaths": ["/proc/sys"],
        "Seccomp": {"DefaultAction": "SCMP_ACT_ALLOW", "Syscalls": [{"Names": ["kexec_load"], "Action": "SCMP_ACT_ERRNO", "errnoret": 1}]},
    },
}  # fmt: skip
STORAGE = {"driver": "local", "source": "local", "fstype": "local", "options": ["mode=0777"], "mount_point": "/run/kata-containers/sandbox/local/vol"}  # fmt: skip

#: method -> JSON requests (protobuf JSON mapping)
REQUESTS: dict[str, list[dict[str, Any]]] = {
    "CreateSandbox": [
        {"hostname": "pod", "sandbox_id": "p1", "storages": [STORAGE], "sandbox_pidns": False},
        {"hostname": "pod", "sandbox_id": "p1", "dns": ["nameserver 10.0.0.10"], "kernel_modules": [{"name": "dummy"}]},
    ],
    "DestroySandbox": [{}],
    "CreateContainer": [
        {"container_id": "c1", "exec_id": "c1", "OCI": SPEC, "storages": [STORAGE], "sandbox_pidns": False},
        {"container_id": "c1", "exec_id": "c1", "OCI": SPEC, "devices": [{"id": "d1", "type": "blk", "vm_path": "/dev/vdb", "container_path": "/dev/xvda"}]},
    ],
    "StartContainer": [{"container_id": "c1"}],
    "RemoveContainer": [{"container_id": "c1", "timeout": 0}, {"container_id": "c1", "timeout": 5}],
    "ExecProcess": [{"container_id": "c1", "exec_id": "e1", "process": SPEC["Process"]}],
    "SignalProcess": [{"container_id": "c1", "exec_id": "", "signal": 15}, {"container_id": "c1", "exec_id": "e1", "signal": 9}],
    "WaitProcess": [{"container_id": "c1", "exec_id": ""}, {"container_id": "c1", "exec_id": "e1"}],
    "UpdateContainer": [{"container_id": "c1", "resources": SPEC["Linux"]["Resources"]}],
    "UpdateEphemeralMounts": [{"storages": [{"driver": "ephemeral", "source": "tmpfs", "fstype": "tmpfs", "mount_point": "/run/kata-containers/sandbox/ephemeral/e"}]}],
    "StatsContainer": [{"container_id": "c1"}],
    "PauseContainer": [{"container_id": "c1"}],
    "ResumeContainer": [{"container_id": "c1"}],
    "RemoveStaleVirtiofsShareMounts": [{}],
    "GetDiagnosticData": [{"log_type": "agent", "container_id": "c1"}],
    "WriteStdin": [{"container_id": "c1", "exec_id": "e1", "data": "aGVsbG8K"}, {"container_id": "c1", "exec_id": "e1"}],
    "ReadStdout": [{"container_id": "c1", "exec_id": "e1", "len": 32768}],
    "ReadStderr": [{"container_id": "c1", "exec_id": "", "len": 32768}],
    "CloseStdin": [{"container_id": "c1", "exec_id": "e1"}],
    "TtyWinResize": [{"container_id": "c1", "exec_id": "e1", "row": 24, "column": 80}],
    "UpdateInterface": [
        {"interface": {"device": "eth0", "name": "eth0", "IPAddresses": [{"family": "v4", "address": "10.0.0.2", "mask": "24"}], "mtu": 1500, "hwAddr": "02:42:ac:11:00:02"}},
        {"interface": {"name": "lo", "mtu": 65536}},
    ],
    "UpdateRoutes": [{"routes": {"Routes": [{"dest": "10.0.0.0/24", "device": "eth0", "scope": 253}, {"gateway": "10.0.0.1", "device": "eth0"}]}}],
    "ListInterfaces": [{}],
    "ListRoutes": [{}],
    "AddARPNeighbors": [{"neighbors": {"ARPNeighbors": [{"toIPAddress": {"address": "10.0.0.1"}, "device": "eth0", "lladdr": "02:42:ac:11:00:01", "state": 128}]}}],
    "GetIPTables": [{"is_ipv6": False}, {"is_ipv6": True}],
    "SetIPTables": [{"is_ipv6": False, "data": "KmZpbHRlcgo6SU5QVVQgQUNDRVBUIFswOjBdCkNPTU1JVAo="}],
    "GetMetrics": [{}],
    "MemAgentMemcgSet": [{"disabled": False, "swap": True, "swappiness_max": 50, "period_secs": 600}],
    "MemAgentCompactSet": [{"disabled": False, "period_secs": 600, "compact_order": 9}],
    "OnlineCPUMem": [{"wait": False, "nb_cpus": 2, "cpu_only": True}, {"wait": True, "nb_cpus": 1}],
    "ReseedRandomDev": [{"data": "AAECAwQFBgcICQoLDA0ODw=="}],
    "GetGuestDetails": [{"mem_block_size": True, "mem_hotplug_probe": True}],
    "MemHotplugByProbe": [{"memHotplugProbeAddr": ["134217728"]}],
    "CopyFile": [
        {"path": f"{SHARED}/p1-resolv.conf", "file_size": 22, "file_mode": 0o100644, "dir_mode": 0o40755, "data": "bmFtZXNlcnZlciAxMC4wLjAuMTAK"},
        {"path": f"{SHARED}/watch/..data", "file_mode": 0o120777, "data": "Li4yMDI0XzAx"},
        {"path": f"{SHARED}/watch/dir", "file_mode": 0o40755, "dir_mode": 0o40755},
    ],
    "GetOOMEvent": [{}],
    "AddSwap": [{"PCIPath": [2, 0]}],
    "AddSwapPath": [{"path": f"{SHARED}/swapfile"}],
    "GetVolumeStats": [{"volume_guest_path": "/run"}],
    "ResizeVolume": [{"volume_guest_path": "/run/kata-containers/sandbox/local/vol", "size": 1048576}],
}  # fmt: skip


def dispatch_seeds() -> list[tuple[str, bytes]]:
    methods = {m.name: m for m in fuzzlib.fuzzed_methods()}
    out = []
    for name, requests in REQUESTS.items():
        if name not in methods:
            continue
        for body in requests:
            msg = json_format.ParseDict(body, methods[name].request())
            out.append((name, msg.SerializeToString()))
    return out


def frame_seeds() -> list[bytes]:
    """Byte streams a client might send: good calls, oversized and odd headers, split frames."""

    def request(sid: int, method: str, payload: bytes = b"", flags: int = 0, timeout: int = 10**9) -> bytes:
        req = ttrpc_pb2.Request(service="grpc.Health", method=method, payload=payload, timeout_nano=timeout)
        return encode_frame(sid, TYPE_REQUEST, flags, req.SerializeToString())

    return [
        request(1, "Check"),
        request(1, "Check") + request(3, "Version") + request(5, "Check"),
        request(1, "Check", flags=0x2) + encode_frame(1, TYPE_DATA, 0x1 | 0x4, b""),
        encode_header(0xFFFF_FFFF, 1, TYPE_REQUEST, 0) + b"\0" * 64,
        encode_header((4 << 20) + 1, 3, TYPE_REQUEST, 0) + b"\0" * 32,
        request(2, "Check") + request(1, "Check") + request(1, "Check"),
        request(1, "Nope") + encode_frame(3, TYPE_REQUEST, 0, b"\xff\xff\xff"),
        encode_frame(7, TYPE_DATA, 0, b"x")
        + encode_frame(9, 0x2, 0, b"")
        + encode_frame(11, 0x7F, 0xFF, b"y"),
    ]


def write_corpus() -> None:
    for kind, items in (
        ("dispatch", [fuzzlib.encode_input(n, p) for n, p in dispatch_seeds()]),
        ("frames", frame_seeds()),
    ):
        folder = fuzzlib.CORPUS / kind
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for data in items:
            (folder / f"{hashlib.sha1(data).hexdigest()[:16]}.bin").write_bytes(data)
        print(f"{folder}: {len(items)} files", file=sys.stderr)


if __name__ == "__main__":
    write_corpus()
