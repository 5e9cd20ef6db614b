"""A real agent process with issue 5's optional features switched on by test variables.

The sequence is ``kata-agent``'s (see agent/cli.py), but each feature's
address comes from a ``BOOT_TEST_*`` variable, so every module is tested on
its own unix socket whatever the configuration options say:
``BOOT_TEST_CONSOLE_ADDR``, ``BOOT_TEST_TRACE_ADDR``, ``BOOT_TEST_LOG_ADDR``.
The server address comes from ``KATA_AGENT_SERVER_ADDR`` as in a guest.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    from agent import log
    from agent.config import load_config

    config, _ = load_config([])
    log.configure(level=config.log_level)
    sink = None
    if os.environ.get("BOOT_TEST_LOG_ADDR"):
        from agent import logsink

        sink = logsink.install(config, address=os.environ["BOOT_TEST_LOG_ADDR"])
    logger = log.logger("root")
    log.announce(config, "test")

    from agent.app import Agent

    agent = Agent(config)
    agent.start()
    if sink is not None:
        sink.attach(agent)
    if os.environ.get("BOOT_TEST_CONSOLE_ADDR"):
        from agent import debug_console

        if debug_console.start(agent, address=os.environ["BOOT_TEST_CONSOLE_ADDR"]) is None:
            return 3
    if os.environ.get("BOOT_TEST_TRACE_ADDR"):
        from agent import tracing

        if tracing.install(agent, address=os.environ["BOOT_TEST_TRACE_ADDR"]) is None:
            return 4
    for signum in (signal.SIGTERM, signal.SIGINT):
        agent.loop.add_signal_handler(signum, lambda s: agent.stop())
    logger.info("serving", address=config.server_addr)
    try:
        agent.run()
    finally:
        agent.close()
    logger.info("stopped")
    if sink is not None:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
