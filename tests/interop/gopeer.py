"""Processes shared by the interop tests and the benchmarks.

Builds the Go ttRPC peer (tests/interop/build.sh), starts our agent and the Go reference
server on unix sockets, and probes readiness with a hand-made Check frame so that readiness
does not depend on the Python client under test.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from agent.protocols import health_pb2
from ttrpc.protocols import ttrpc_pb2

ROOT = Path(__file__).resolve().parents[2]
INTEROP = ROOT / "tests" / "interop"
#: Git-ignored build directory (the Go build cache there makes rebuilds take ~1 s).
DEFAULT_OUT = INTEROP / "bin"


def build_peer(out: Path = DEFAULT_OUT) -> Path:
    """Build the Go peer offline; returns the binary. Fails loudly when a tool is missing."""
    proc = subprocess.run(
        ["sh", str(INTEROP / "build.sh"), str(out)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"build.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return out / "ttrpcpeer"


def peer_messages(out: Path = DEFAULT_OUT) -> dict[str, type[Message]]:
    """Python classes for the peer's test messages (ttrpcpeer.*), from build.sh's protoset.

    A private descriptor pool keeps the peer's copy of health.proto away from the agent's.
    """
    fds = descriptor_pb2.FileDescriptorSet.FromString((out / "peer.protoset").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    names = ["FailRequest", "SleepRequest", "Empty", "KeyValue", "EchoRequest", "EchoReply"]
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ttrpcpeer.{n}")) for n in names}


def probe_check(path: str, timeout: float = 2.0) -> bool:
    """One raw ttRPC Health.Check on a fresh connection; True if answered SERVING."""
    req = ttrpc_pb2.Request(service="grpc.Health", method="Check", payload=b"").SerializeToString()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(struct.pack(">IIBB", len(req), 1, 1, 0) + req)
            length, stream_id, msg_type, _ = struct.unpack(">IIBB", _recv_exact(s, 10))
            body = _recv_exact(s, length)
    except OSError:
        return False
    if stream_id != 1 or msg_type != 2:
        return False
    resp = ttrpc_pb2.Response.FromString(body)
    if resp.status.code != 0:
        return False
    return (
        health_pb2.HealthCheckResponse.FromString(resp.payload).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def sockaddr(addr: str) -> str:
    """The socket() address of a unix:// URL (abstract names get their leading NUL)."""
    rest = addr.removeprefix("unix://")
    return "\0" + rest[1:] if rest.startswith("@") else rest


class Proc:
    """A child process with its output in a temporary file, stopped by SIGTERM."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the child
        self.started = time.monotonic()
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.popen.pid

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, addr: str, timeout: float = 30.0) -> float:
        """Poll until the server answers Check; returns seconds since exec."""
        path = sockaddr(addr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{self.output()}")
            if probe_check(path):
                return time.monotonic() - self.started
            time.sleep(0.005)
        raise TimeoutError(f"{self.name} did not answer Check within {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it lingers; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        return self.popen.returncode


def agent_env() -> dict[str, str]:
    """The environment for our agent: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def start_agent(addr: str, extra: list[str] | None = None) -> Proc:
    """Our agent as `python3 -m agent --server-addr ADDR`, answering Check on return."""
    proc = Proc([sys.executable, "-m", "agent", "--server-addr", addr, *(extra or [])], "agent", agent_env())
    try:
        proc.wait_ready(addr)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_go_server(peer: Path, addr: str) -> Proc:
    """The Go reference server (`ttrpcpeer server ADDR`), answering Check on return."""
    proc = Proc([str(peer), "server", addr], "go server")
    try:
        proc.wait_ready(addr)
    except BaseException:
        proc.stop()
        raise
    return proc
