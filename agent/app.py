"""The agent process: one loop, one ttRPC server, the registered services."""

from __future__ import annotations

from agent.service import AGENT_SERVICE, HEALTH_SERVICE, agent_methods, health
from ttrpc.loop import Loop
from ttrpc.server import Server


class Agent:
    def __init__(self, server_addr: str) -> None:
        self.server_addr = server_addr
        self.loop = Loop()
        self.server = Server(self.loop)
        self.server.register_service(HEALTH_SERVICE, health.METHODS)
        self.server.register_service(AGENT_SERVICE, agent_methods({}))

    def start(self) -> None:
        self.server.listen(self.server_addr)

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()

    def close(self) -> None:
        self.server.close()
        self.loop.close()
