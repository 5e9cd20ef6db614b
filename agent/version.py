"""Versions the agent reports (Health.Version and the start-up announce)."""

AGENT_VERSION = "0.1.0"
#: The agent API version upstream agents report as ``grpc_version``.
API_VERSION = "0.0.1"
