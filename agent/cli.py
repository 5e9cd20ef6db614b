"""``kata-agent``: resolve the configuration, then serve until told to stop."""

from __future__ import annotations

import os
import signal
import sys

from agent.version import AGENT_VERSION

DEFAULT_SERVER_ADDR = "vsock://-1:1024"


def _cmdline_value(key: str, path: str = "/proc/cmdline") -> str | None:
    try:
        with open(path) as fh:
            tokens = fh.read().split()
    except OSError:
        return None
    value = None
    for token in tokens:
        name, sep, val = token.partition("=")
        if sep and name == key:
            value = val
    return value


def _parse_args(argv: list[str]) -> dict[str, str | None]:
    import argparse

    parser = argparse.ArgumentParser(prog="kata-agent", description="Kata Containers guest agent (ttRPC)")
    parser.add_argument("--server-addr", help="listen address: vsock://CID:PORT, unix:///path, unix://@name")
    parser.add_argument("--log-level", help="trace, debug, info, warn, error")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    ns = parser.parse_args(argv)
    return vars(ns)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args["version"]:
        print(f"kata-agent {AGENT_VERSION}")
        return 0
    server_addr = (
        args["server_addr"]
        or os.environ.get("KATA_AGENT_SERVER_ADDR")
        or _cmdline_value("agent.server_addr")
        or DEFAULT_SERVER_ADDR
    )
    from agent.app import Agent

    agent = Agent(server_addr)
    try:
        agent.start()
    except OSError as exc:
        print(f'{{"level":"error","msg":"cannot listen on {server_addr}: {exc}"}}', file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        agent.loop.add_signal_handler(signum, lambda _s: agent.stop())
    try:
        agent.run()
    finally:
        agent.close()
    return 0
