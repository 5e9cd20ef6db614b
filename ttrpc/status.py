"""gRPC status codes and the exception that carries one across a ttRPC call.

ttRPC reuses gRPC's status model (``google.rpc.Status``): a handler that raises
:class:`RPCError` answers with that code and message; any other exception is
answered as UNKNOWN with its text, as the Go reference server does.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """The canonical gRPC status codes (numbers are part of the wire format)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RPCError(Exception):
    """An error with a status code: raised by handlers, and by the client on a failed call."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, code: Code | int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = Code(code) if code in Code._value2member_map_ else code  # type: ignore[assignment]
        self.message = message

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, Code) else str(self.code)
        return f"{name}: {self.message}"
