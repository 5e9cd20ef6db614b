"""Sans-IO codec for the agent <-> network-worker socketpair.

Each message is a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON. Requests are ``{"id", "op", "args"}``; replies are
``{"id", "result"}`` or ``{"id", "error": {"code", "message"}}`` and always
carry ``idle_deadline``: the worker's CLOCK_MONOTONIC instant after which it
will exit if nothing arrives. Monotonic time is shared by every process on the
machine, so the agent knows exactly until when it may send without racing the
worker's idle exit. Nothing here touches a socket: the lead's event loop and
the blocking client both drive the same codec.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

from agent import errors
from ttrpc.status import Code

HEADER = struct.Struct(">I")
MAX_MESSAGE = 16 * 1024 * 1024  # a route table of a few thousand entries fits easily

_ERROR_BY_CODE: dict[int, type[errors.AgentError]] = {
    int(cls.code): cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.PermissionDenied,
        errors.FailedPrecondition,
        errors.ResourceExhausted,
        errors.DeadlineExceeded,
        errors.Unavailable,
        errors.Unimplemented,
        errors.Internal,
    )
}


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid message: the channel is unusable."""


def encode_message(obj: dict[str, Any]) -> bytes:
    """Frame one JSON-able dict."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_MESSAGE} byte limit")
    return HEADER.pack(len(body)) + body


class MessageDecoder:
    """Accumulates bytes and yields complete decoded messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > MAX_MESSAGE:
                raise ProtocolError(f"peer announced a {length} byte message (limit {MAX_MESSAGE})")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            try:
                msg = json.loads(body)
            except ValueError as exc:
                raise ProtocolError(f"undecodable message: {exc}") from None
            if not isinstance(msg, dict):
                raise ProtocolError("message is not a JSON object")
            out.append(msg)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


class Reply(NamedTuple):
    """One decoded worker reply."""

    id: int
    result: Any = None
    error_code: int | None = None
    error_message: str = ""
    idle_deadline: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def unwrap(self) -> Any:
        """The result, or the agent error the worker reported."""
        if self.error_code is None:
            return self.result
        raise error_from_wire(self.error_code, self.error_message)


def error_from_wire(code: int, message: str) -> errors.AgentError:
    cls = _ERROR_BY_CODE.get(code, errors.Internal)
    return cls(message)


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """Map an exception raised by an operation to ``{code, message}``."""
    if isinstance(exc, errors.AgentError):
        return {"code": int(exc.code), "message": str(exc.args[0]) if exc.args else ""}
    return {"code": int(Code.INTERNAL), "message": f"{type(exc).__name__}: {exc}"}


class ClientCodec:
    """Agent side: numbers requests, decodes replies, tracks the worker's idle deadline."""

    def __init__(self) -> None:
        self._decoder = MessageDecoder()
        self._next_id = 1
        self.pending: set[int] = set()
        self.idle_deadline: float | None = None

    def encode_request(self, op: str, args: dict[str, Any] | None = None) -> tuple[int, bytes]:
        req_id = self._next_id
        self._next_id += 1
        data = encode_message({"id": req_id, "op": op, "args": args or {}})
        self.pending.add(req_id)
        return req_id, data

    def feed(self, data: bytes) -> list[Reply]:
        replies = []
        for msg in self._decoder.feed(data):
            reply = _parse_reply(msg)
            self.pending.discard(reply.id)
            if reply.idle_deadline is not None:
                self.idle_deadline = reply.idle_deadline
            replies.append(reply)
        return replies


def _parse_reply(msg: dict[str, Any]) -> Reply:
    req_id = msg.get("id")
    if not isinstance(req_id, int):
        raise ProtocolError(f"reply without an integer id: {msg!r:.200}")
    deadline = msg.get("idle_deadline")
    deadline = float(deadline) if isinstance(deadline, (int, float)) else None
    err = msg.get("error")
    if err is not None:
        if not isinstance(err, dict):
            raise ProtocolError("error field is not an object")
        return Reply(
            id=req_id,
            error_code=int(err.get("code", Code.INTERNAL)),
            error_message=str(err.get("message", "")),
            idle_deadline=deadline,
        )
    return Reply(id=req_id, result=msg.get("result"), idle_deadline=deadline)


def encode_result(req_id: int, result: Any, idle_deadline: float) -> bytes:
    """Worker side: a successful reply."""
    return encode_message({"id": req_id, "result": result, "idle_deadline": idle_deadline})


def encode_error(req_id: int, exc: BaseException, idle_deadline: float) -> bytes:
    """Worker side: a failed reply."""
    return encode_message({"id": req_id, "error": error_to_wire(exc), "idle_deadline": idle_deadline})
