"""Fuzzing pieces shared by the tests and ``benchmarks/fuzz.py``.

- a source of choices (``random.Random`` or atheris' FuzzedDataProvider) behind one interface;
- protobuf messages generated from the descriptors (every field type, edge values,
  path-like and id-like strings), and byte-level mutators for valid payloads;
- :class:`WireClient`: a raw ttRPC client on a real socket that checks every reply
  byte by byte (one response frame per request, a decodable status, a decodable
  reply on success) and pipelines requests so a fuzz budget buys many calls;
- the corpus format: ``Method\\0payload`` files under ``tests/hardening/corpus/dispatch``.
"""

from __future__ import annotations

import math
import random
import select
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from google.protobuf import symbol_database
from google.protobuf.message import DecodeError, Message

from agent.protocols import agent_pb2, health_pb2
from ttrpc.address import connect, parse_address
from ttrpc.connection import FrameDecoder, OversizedFrame
from ttrpc.frame import TYPE_REQUEST, TYPE_RESPONSE, encode_frame
from ttrpc.protocols import ttrpc_pb2
from ttrpc.status import Code

CORPUS = Path(__file__).with_name("corpus")
AGENT_SERVICE = "grpc.AgentService"

#: Methods the dispatch fuzzer never calls, and why.
EXCLUDED = {
    "SetGuestDateTime": "sets the realtime clock, which no namespace isolates: it would move the host's clock",
    "SetPolicy": "replaces the agent-wide policy: one accepted mutation refuses every later call and blinds "
    "the fuzzer (fuzzed on its own in test_policy)",
}


#: UNKNOWN answers already reported: (method, text in the message).  The fuzzers still
#: fail on any other UNKNOWN.
KNOWN_UNKNOWN = (
    # intermittent (a race; a replay of the fuzzer's history does not reproduce it): README, findings
    ("DestroySandbox", "Device or resource busy"),
)


class MethodInfo(NamedTuple):
    name: str
    request: type[Message]
    response: type[Message]


def agent_methods() -> list[MethodInfo]:
    db = symbol_database.Default()
    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    return [
        MethodInfo(m.name, db.GetSymbol(m.input_type.full_name), db.GetSymbol(m.output_type.full_name))
        for m in service.methods
    ]


def fuzzed_methods() -> list[MethodInfo]:
    return [m for m in agent_methods() if m.name not in EXCLUDED]


# --- choices ---------------------------------------------------------------------------------


class Source(Protocol):
    def int(self, lo: int, hi: int) -> int: ...
    def bytes(self, max_len: int) -> bytes: ...
    def done(self) -> bool: ...


class RandomSource:
    def __init__(self, seed: int | random.Random) -> None:
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def bytes(self, max_len: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_len))

    def done(self) -> bool:
        return False


class AtherisSource:
    """Choices read from a libFuzzer input, so coverage guidance steers them."""

    def __init__(self, data: bytes) -> None:
        import atheris

        self.fdp = atheris.FuzzedDataProvider(data)

    def int(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)

    def bytes(self, max_len: int) -> bytes:
        return self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, max_len))

    def done(self) -> bool:
        return self.fdp.remaining_bytes() == 0


def pick(src: Source, seq: Sequence[Any]) -> Any:
    return seq[src.int(0, len(seq) - 1)]


def chance(src: Source, one_in: int) -> bool:
    return src.int(0, one_in - 1) == 0


# --- values ----------------------------------------------------------------------------------

STRINGS = (
    "", "a", "c1", "sandbox", "x" * 300, "..", ".", "/", "../../etc/passwd", "a/../../b", "/etc/passwd",
    "/run/kata-containers/shared/containers/", "/run/kata-containers/shared/containers/c1/rootfs",
    "/proc/self/root", "/dev/vda", "\x00", "a\x00b", "é\u2028😀", " ", "-1", "lo", "eth0", "127.0.0.1",
    "::1", "0.0.0.0/0", "10.0.0.1/24", "00:11:22:33:44:55", "bind", "tmpfs", "rbind", "ro", "local",
    "ephemeral", "virtio-fs", "blk", "0000:00:02.0", "02/00", "/bin/sh", "sh", "-c", "true", "*",
    "SIGKILL", "%s%n", "${PATH}", "A=B", "PATH=/bin", "io.kubernetes.cri.sandbox-id",
)  # fmt: skip
INT_EDGES = (0, 1, -1, 2, 7, 255, 256, 4096, 65535, 65536, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)  # fmt: skip
_RANGES = {
    "TYPE_INT32": (-(2**31), 2**31 - 1), "TYPE_SINT32": (-(2**31), 2**31 - 1),
    "TYPE_SFIXED32": (-(2**31), 2**31 - 1), "TYPE_INT64": (-(2**63), 2**63 - 1),
    "TYPE_SINT64": (-(2**63), 2**63 - 1), "TYPE_SFIXED64": (-(2**63), 2**63 - 1),
    "TYPE_UINT32": (0, 2**32 - 1), "TYPE_FIXED32": (0, 2**32 - 1),
    "TYPE_UINT64": (0, 2**64 - 1), "TYPE_FIXED64": (0, 2**64 - 1),
}  # fmt: skip
_FLOATS = (0.0, -0.0, 1.5, -1.0, 1e300, math.inf, -math.inf, math.nan)


def _type_name(field: Any) -> str:
    for name in dir(field):
        if name.startswith("TYPE_") and getattr(field, name) == field.type:
            return name
    return "?"


def _int(src: Source, lo: int, hi: int) -> int:
    if chance(src, 2):
        candidates = [v for v in INT_EDGES if lo <= v <= hi]
        return pick(src, candidates)
    return src.int(lo, hi)


def _string(src: Source) -> str:
    if chance(src, 3):
        return src.bytes(64).decode("utf-8", "replace")
    text = pick(src, STRINGS)
    if chance(src, 8):
        text = text * src.int(2, 50)
    return text


def _scalar(field: Any, src: Source) -> Any:
    kind = _type_name(field)
    if kind in _RANGES:
        return _int(src, *_RANGES[kind])
    if kind == "TYPE_BOOL":
        return bool(src.int(0, 1))
    if kind in ("TYPE_FLOAT", "TYPE_DOUBLE"):
        return pick(src, _FLOATS) if chance(src, 2) else src.int(-(10**9), 10**9) / 7
    if kind == "TYPE_STRING":
        return _string(src)
    if kind == "TYPE_BYTES":
        return src.bytes(pick(src, (8, 64, 4096)))
    if kind == "TYPE_ENUM":
        values = [v.number for v in field.enum_type.values]
        return pick(src, values) if not chance(src, 5) else _int(src, -(2**31), 2**31 - 1)
    raise ValueError(f"unhandled field type {kind}")


def fill(msg: Message, src: Source, depth: int = 0) -> Message:
    """Set a random subset of ``msg``'s fields (nested messages down to a few levels)."""
    for field in msg.DESCRIPTOR.fields:
        if src.done() or not chance(src, 2):
            continue
        is_message = field.type == field.TYPE_MESSAGE
        if is_message and depth >= 4:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, field.name)
            kfield = field.message_type.fields_by_name["key"]
            vfield = field.message_type.fields_by_name["value"]
            for _ in range(src.int(0, 3)):
                key = _scalar(kfield, src)
                if vfield.type == vfield.TYPE_MESSAGE:
                    fill(target[key], src, depth + 1)
                else:
                    target[key] = _scalar(vfield, src)
        elif field.is_repeated:
            target = getattr(msg, field.name)
            count = src.int(0, 3) if not chance(src, 16) else src.int(4, 64)
            for _ in range(count):
                if is_message:
                    fill(target.add(), src, depth + 1)
                else:
                    target.append(_scalar(field, src))
        elif is_message:
            fill(getattr(msg, field.name), src, depth + 1)
            getattr(msg, field.name).SetInParent()
        else:
            setattr(msg, field.name, _scalar(field, src))
    return msg


def random_message(cls: type[Message], src: Source) -> bytes:
    return fill(cls(), src).SerializeToString()


# --- mutations of valid payloads -------------------------------------------------------------


def mutate(data: bytes, src: Source, others: Sequence[bytes] = ()) -> bytes:
    """One to four byte-level edits: flips, overwrites, inserts, deletes, splices, huge varints."""
    buf = bytearray(data)
    for _ in range(src.int(1, 4)):
        op = src.int(0, 8)
        pos = src.int(0, len(buf)) if buf else 0
        if op == 0 and buf:
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << src.int(0, 7)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = pick(src, (0, 0x7F, 0x80, 0xFF, src.int(0, 255)))
        elif op == 2:
            buf[pos:pos] = src.bytes(16)
        elif op == 3 and buf:
            del buf[pos : pos + src.int(1, 16)]
        elif op == 4:
            del buf[pos:]
        elif op == 5 and buf:
            end = min(len(buf), pos + src.int(1, 32))
            buf[pos:pos] = buf[pos:end] * src.int(1, 8)
        elif op == 6 and others:
            other = pick(src, others)
            cut = src.int(0, len(other))
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 7:
            # an unknown or repeated field with an absurd length prefix or a 10-byte varint
            tag = (src.int(1, 40) << 3) | pick(src, (0, 1, 2, 5))
            buf[pos:pos] = _varint(tag) + pick(src, (b"\xff" * 9 + b"\x01", _varint(2**32), b"\x80"))
        else:
            buf[pos:pos] = _varint(src.int(0, 2**32))
    return bytes(buf)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# --- corpus ----------------------------------------------------------------------------------


def encode_input(method: str, payload: bytes) -> bytes:
    return method.encode() + b"\0" + payload


def decode_input(data: bytes, methods: Sequence[MethodInfo]) -> tuple[MethodInfo, bytes] | None:
    """``Method\\0payload`` -> (method, payload); a mangled name still picks a method."""
    name, sep, payload = data.partition(b"\0")
    if not sep:
        return None
    by_name = {m.name.encode(): m for m in methods}
    method = by_name.get(name) or methods[sum(name) % len(methods)]
    return method, payload


def load_corpus(kind: str = "dispatch") -> list[bytes]:
    folder = CORPUS / kind
    return [p.read_bytes() for p in sorted(folder.glob("*.bin"))] if folder.is_dir() else []


def seeds_by_method(methods: Sequence[MethodInfo]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {m.name: [] for m in methods}
    for data in load_corpus("dispatch"):
        decoded = decode_input(data, methods)
        if decoded is not None and data.split(b"\0", 1)[0] == decoded[0].name.encode():
            out[decoded[0].name].append(decoded[1])
    return out


# --- the wire --------------------------------------------------------------------------------


class Violation(AssertionError):
    """The agent broke a rule the fuzzer checks (bad frame, lost reply, dead connection)."""


class Reply(NamedTuple):
    stream_id: int
    method: str
    payload: bytes
    code: int
    message: str
    latency: float


class _Pending(NamedTuple):
    method: MethodInfo | None
    payload: bytes
    sent: float
    deadline: float


class WireClient:
    """A raw ttRPC client that verifies each reply and lets many calls be in flight."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.sock = connect(parse_address(address), timeout)
        self.sock.setblocking(False)
        self.decoder = FrameDecoder()
        self.next_id = 1
        self.pending: dict[int, _Pending] = {}
        self._out = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self, method: MethodInfo | None, payload: bytes, deadline: float, *, service: str = AGENT_SERVICE
    ) -> int:
        """Queue one request (``deadline`` seconds, sent as timeout_nano); returns its stream id."""
        sid, self.next_id = self.next_id, self.next_id + 2
        name = method.name if method is not None else "Check"
        req = ttrpc_pb2.Request(
            service=service, method=name, payload=payload, timeout_nano=int(deadline * 1e9)
        )
        self._out += encode_frame(sid, TYPE_REQUEST, 0, req.SerializeToString())
        now = time.monotonic()
        self.pending[sid] = _Pending(method, payload, now, now + deadline)
        self._flush()
        return sid

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError as exc:
                raise Violation(f"the agent dropped the connection while we wrote: {exc}") from None
            del self._out[:sent]

    def poll(self, wait: float, grace: float) -> list[Reply]:
        """Read what arrived within ``wait`` seconds; raise if a call is ``grace`` s past its deadline."""
        want = select.POLLIN | (select.POLLOUT if self._out else 0)
        poller = select.poll()
        poller.register(self.sock, want)
        replies: list[Reply] = []
        if poller.poll(max(0.0, wait) * 1000):
            self._flush()
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                data = None
            except OSError as exc:
                raise Violation(f"the agent dropped the connection: {exc}") from None
            if data == b"":
                raise Violation("the agent closed the connection")
            if data:
                replies = self._frames(data)
        now = time.monotonic()
        for sid, p in self.pending.items():
            if now > p.deadline + grace:
                name = p.method.name if p.method else "Check"
                raise Violation(
                    f"no reply to {name} (stream {sid}) {now - p.sent:.1f} s after sending it, "
                    f"{now - p.deadline:.1f} s past its deadline; payload {p.payload.hex()}"
                )
        return replies

    def _frames(self, data: bytes) -> list[Reply]:
        out = []
        now = time.monotonic()
        for frame in self.decoder.feed(data):
            if isinstance(frame, OversizedFrame):
                raise Violation(f"the agent sent a {frame.length}-byte frame")
            if frame.msg_type != TYPE_RESPONSE:
                raise Violation(f"the agent sent a frame of type {frame.msg_type} on a unary call")
            p = self.pending.pop(frame.stream_id, None)
            if p is None:
                raise Violation(f"a reply on stream {frame.stream_id}, which is not waiting for one")
            try:
                resp = ttrpc_pb2.Response.FromString(frame.data)
            except DecodeError as exc:
                raise Violation(f"undecodable Response frame: {exc}") from None
            code, message = resp.status.code, resp.status.message
            if not 0 <= code <= 16:
                raise Violation(f"status code {code} is not a gRPC code")
            name = p.method.name if p.method else "Check"
            if code == 0:
                reply_type = p.method.response if p.method else health_pb2.HealthCheckResponse
                try:
                    reply_type.FromString(resp.payload)
                except DecodeError as exc:
                    raise Violation(f"{name}: undecodable {reply_type.__name__}: {exc}") from None
            out.append(Reply(frame.stream_id, name, p.payload, code, message, now - p.sent))
        return out

    def drain(self, grace: float, window: int = 0) -> list[Reply]:
        """Wait until at most ``window`` calls are in flight."""
        out: list[Reply] = []
        while len(self.pending) > window:
            out += self.poll(0.5, grace)
        return out

    def check(self, timeout: float = 10.0) -> None:
        """Health.Check on this connection must answer SERVING."""
        self.send(None, b"", timeout, service="grpc.Health")
        replies = self.drain(grace=timeout)
        bad = [r for r in replies if r.method == "Check" and r.code != 0]
        if bad:
            raise Violation(f"Check failed: {Code(bad[0].code).name} {bad[0].message}")


class Tally:
    """Replies per method and status code, and the UNKNOWN answers (uncaught handler exceptions)."""

    def __init__(self) -> None:
        self.calls = 0
        self.codes: dict[str, dict[str, int]] = {}
        self.unknown: dict[str, tuple[str, bytes]] = {}
        self.known: dict[str, int] = {}
        self.samples: dict[tuple[str, str], str] = {}
        self.max_latency = 0.0

    def add(self, replies: Iterable[Reply]) -> None:
        for r in replies:
            self.calls += 1
            name = Code(r.code).name
            per = self.codes.setdefault(r.method, {})
            per[name] = per.get(name, 0) + 1
            self.samples.setdefault((r.method, name), r.message)
            self.max_latency = max(self.max_latency, r.latency)
            if r.code != Code.UNKNOWN:
                continue
            if any(r.method == m and text in r.message for m, text in KNOWN_UNKNOWN):
                self.known[r.method] = self.known.get(r.method, 0) + 1
            elif r.method not in self.unknown:
                self.unknown[r.method] = (r.message, r.payload)

    def summary(self) -> str:
        lines = [f"{self.calls} calls, slowest reply {self.max_latency * 1000:.0f} ms"]
        for method in sorted(self.codes):
            codes = ", ".join(f"{k} {v}" for k, v in sorted(self.codes[method].items()))
            lines.append(f"  {method}: {codes}")
        for method, (message, payload) in sorted(self.unknown.items()):
            lines.append(f"  UNKNOWN from {method}: {message[:200]} (payload {payload[:64].hex()})")
        return "\n".join(lines)


def raw_check(address: str, timeout: float = 10.0) -> None:
    """A fresh connection answers Health.Check."""
    with WireClient(address, timeout) as client:
        client.check(timeout)


def connect_raw(address: str, timeout: float = 5.0) -> socket.socket:
    return connect(parse_address(address), timeout)


def sweep(
    address: str,
    src: Source,
    per_method: int,
    *,
    deadline: float = 1.0,
    grace: float = 15.0,
    window: int = 64,
    methods: Sequence[MethodInfo] | None = None,
) -> Tally:
    """Every method ``per_method`` times on one connection, alternating generated messages and
    mutations of the corpus seeds; raises Violation on a bad or missing reply."""
    methods = list(methods or fuzzed_methods())
    seeds = seeds_by_method(methods)
    everything = [p for v in seeds.values() for p in v]
    tally = Tally()
    with WireClient(address) as client:
        for i in range(per_method):
            for method in methods:
                if i % 2 and seeds[method.name]:
                    payload = mutate(pick(src, seeds[method.name]), src, everything)
                elif i % 4 == 2:
                    payload = src.bytes(64)  # not even protobuf, mostly
                else:
                    payload = random_message(method.request, src)
                client.send(method, payload, deadline)
                tally.add(client.drain(grace, window=window))
        tally.add(client.drain(grace))
        client.check()
    return tally
