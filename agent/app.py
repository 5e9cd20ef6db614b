"""The agent process: one loop, one ttRPC server, the registered services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent import log
from agent.service import AGENT_SERVICE, HEALTH_SERVICE, agent_methods, health
from ttrpc.loop import Loop
from ttrpc.server import Server

if TYPE_CHECKING:
    from agent.config import AgentConfig

_log = log.logger("ttrpc")


def _log_server_error(what: str, exc: BaseException) -> None:
    _log.error(what, error=f"{type(exc).__name__}: {exc}")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.loop = Loop()
        self.loop.exception_handler = lambda exc, cb: _log.error(
            "loop callback failed", callback=repr(cb), error=f"{type(exc).__name__}: {exc}"
        )
        self.server = Server(self.loop, on_error=_log_server_error)
        self.server.register_service(HEALTH_SERVICE, health.METHODS)
        self.server.register_service(AGENT_SERVICE, agent_methods({}))
        #: Set by DestroySandbox in init mode: power the VM off once serving stops.
        self.power_off_requested = False

    def start(self) -> None:
        self.server.listen(self.config.server_addr)

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()

    def close(self) -> None:
        self.server.close()
        self.loop.close()
