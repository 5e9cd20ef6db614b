"""Domain errors, each tied to the status code the runtime expects for it.

Domain modules raise these; the ttRPC server turns them into a status on the
wire, so the service layer never needs a table of exception types.
"""

from __future__ import annotations

from ttrpc.status import Code, RPCError


class AgentError(RPCError):
    """Base of every error the agent reports on purpose (default: INTERNAL)."""

    code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)


class InvalidArgument(AgentError):
    code = Code.INVALID_ARGUMENT


class NotFound(AgentError):
    code = Code.NOT_FOUND


class AlreadyExists(AgentError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(AgentError):
    code = Code.PERMISSION_DENIED


class FailedPrecondition(AgentError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(AgentError):
    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(AgentError):
    code = Code.DEADLINE_EXCEEDED


class Unavailable(AgentError):
    code = Code.UNAVAILABLE


class Unimplemented(AgentError):
    code = Code.UNIMPLEMENTED


class Internal(AgentError):
    code = Code.INTERNAL
