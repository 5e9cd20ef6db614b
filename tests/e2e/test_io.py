"""Container I/O through the agent: no byte lost or reordered, a slow reader back-pressures.

A container writes 16 MiB of random bytes to stdout (and, at the same time,
numbered lines to stderr) while the client reads in 32 KiB calls, pausing
between them. What the client receives must hash like what the container
wrote (the container records its own SHA-256 in a file on the share). The
same through a terminal (raw mode, so the line discipline changes nothing).
Meanwhile the agent's own memory stays within a few MiB: the writer is held
back (bounded buffers), not buffered. With crun and runc.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from agent.protocols import agent_pb2, oci_pb2

from .guest import GuestAgent, pss_kb
from .pod import SHARED, Pod, add_rootfs, container_spec, share_storage

SIZE = 16 * 1024 * 1024
CHUNK = 32 * 1024
NOISE_LINES = 3000


def _out_mount() -> oci_pb2.Mount:
    return oci_pb2.Mount(destination="/out", type="bind", source=f"{SHARED}/out", options=["rbind", "rw"])


def _slow_read(pod: Pod, cid: str, agent_pid: int) -> tuple[bytes, int, int]:
    """Read stdout to EOF in CHUNK calls, pausing between calls; (data, calls, peak anon kB)."""
    chunks, calls, peak = [], 0, 0
    while True:
        data = pod.read(cid, cid, CHUNK)
        calls += 1
        assert len(data) <= CHUNK
        if not data:
            return b"".join(chunks), calls, peak
        chunks.append(data)
        if calls % 32 == 0:
            peak = max(peak, pss_kb(agent_pid, "Pss_Anon"))
        time.sleep(0.002)


@pytest.mark.parametrize("terminal", [False, True], ids=["pipes", "tty"])
def test_16mib_sha256(guest: GuestAgent, pod: Pod, share: Path, terminal: bool) -> None:
    (share / "out").mkdir()
    add_rootfs(share, "io")
    pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(hostname="io", storages=[share_storage(share)]))
    noise = f"i=0; while [ $i -lt {NOISE_LINES} ]; do echo noise-$i >&2; i=$((i+1)); done"
    script = (
        ("stty raw -echo; " if terminal else "")
        + f"head -c {SIZE} /dev/urandom > /tmp/data; sha256sum /tmp/data > /out/sum; "
        + ("" if terminal else f"({noise}) & ")
        + "cat /tmp/data; wait"
    )
    spec = container_spec("io", ["sh", "-c", script], terminal=terminal, mounts=[_out_mount()])
    pod.create("io", spec)
    stderr_box: list[bytes] = []
    reader = None
    if not terminal:
        reader = threading.Thread(target=lambda: stderr_box.append(pod.read_all("io", "io", stream="stderr")))
        reader.start()
    before = pss_kb(guest.pid, "Pss_Anon")
    pod.start("io")
    data, calls, peak = _slow_read(pod, "io", guest.pid)
    assert pod.wait("io", "io") == 0
    expected = (share / "out" / "sum").read_text().split()[0]
    assert len(data) == SIZE and calls >= SIZE // CHUNK
    assert hashlib.sha256(data).hexdigest() == expected
    # The container was held back, not buffered: the agent never held more than a few MiB.
    print(f"agent anon memory: {before} kB before, {peak} kB at most while streaming")
    assert peak - before < 4 * 1024, (before, peak)
    if reader is not None:
        reader.join(60)
        assert stderr_box == ["".join(f"noise-{i}\n" for i in range(NOISE_LINES)).encode()]
    pod.remove("io")
