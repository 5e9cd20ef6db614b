"""SetPolicy: replace the agent policy (the current policy already allowed this call).

The interceptor in :mod:`agent.policy` has asked the current document about
``SetPolicyRequest`` before this handler runs; here the new document is
compiled and swapped in.  Without a policy so far, SetPolicy starts enforcing
one, as an upstream agent booted with the allow-all default policy would.
The engine is imported here, on the first SetPolicy, never at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.protocols import agent_pb2
    from ttrpc.server import CallContext

_EMPTY = empty_pb2.Empty()


def set_policy(agent: Agent, request: agent_pb2.SetPolicyRequest, ctx: CallContext) -> empty_pb2.Empty:
    from agent import policy

    policy.replace(agent, request.policy)
    return _EMPTY
