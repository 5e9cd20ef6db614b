"""The agent process: one loop, one ttRPC server, the registered services.

Capabilities keep their state in components created on first use
(:meth:`Agent.component`), so an idle agent carries only the core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agent import log
from agent.service import AGENT_SERVICE, HEALTH_SERVICE, agent_methods, health
from ttrpc.loop import Loop
from ttrpc.server import Server

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.reaper import Reaper

T = TypeVar("T")
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
        self.server.register_service(AGENT_SERVICE, agent_methods(self))
        self._components: dict[str, Any] = {}
        self._closers: list[Callable[[], Any]] = []
        #: Set by DestroySandbox in init mode: power the VM off once serving stops.
        self.power_off_requested = False

    def component(self, name: str, factory: Callable[[Agent], T]) -> T:
        """The agent-wide ``name`` object, created by ``factory(agent)`` on first use."""
        try:
            return self._components[name]
        except KeyError:
            obj = self._components[name] = factory(self)
            return obj

    def find_component(self, name: str) -> Any | None:
        """The ``name`` component if something already created it (never creates one)."""
        return self._components.get(name)

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` when the agent shuts down (components release fds, workers, mounts)."""
        self._closers.append(fn)

    @property
    def reaper(self) -> Reaper:
        """The one reaper: every child's exit goes through it."""
        return self.component("reaper", _make_reaper)

    def start(self) -> None:
        if self.config.policy_file:
            # Before listening: no call may slip in ahead of the policy.
            from agent.policy import install_file

            install_file(self, self.config.policy_file)
        self.server.listen(self.config.server_addr)
        import os

        if os.getpid() == 1:
            # As the guest's init: reap orphans from the start, and listen for uevents
            # before any device is plugged, so no hot-plug event is missed.
            self.reaper  # noqa: B018
            from agent import uevents

            uevents.install(self)

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()

    def close(self) -> None:
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - shutting down: log and go on
                _log.error("cleanup failed", error=f"{type(exc).__name__}: {exc}")
        self.server.close()
        self.loop.close()


def _make_reaper(agent: Agent) -> Reaper:
    from agent.reaper import Reaper

    reaper = Reaper(agent.loop)
    reaper.install()
    agent.on_close(reaper.uninstall)
    return reaper
