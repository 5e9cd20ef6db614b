"""``kata-agent``: resolve the configuration, do PID-1 duties if needed, serve until stopped.

Order matters when we are the VM's init: the base filesystems must be
mounted before the configuration can read ``/proc/cmdline``.
"""

from __future__ import annotations

import os
import signal
import sys

from agent.version import AGENT_VERSION


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["trace"]:  # `kata-agent trace PID`: the syscall tracer, its own process
        from agent.trace_cmd import main as trace_main

        return trace_main(args[1:])

    from agent import log
    from agent.config import ConfigError, format_config, load_config

    init_mode = os.getpid() == 1
    if init_mode:
        from agent import init

        init.mount_base()
    try:
        config, actions = load_config(args)
    except ConfigError as exc:
        print(f"kata-agent: {exc}", file=sys.stderr)
        return 2
    if actions.version:
        print(f"kata-agent {AGENT_VERSION}")
        return 0
    if actions.print_config:
        print(format_config(config), end="")
        return 0
    log.configure(level=config.log_level)
    log_sink = None
    if config.log_vport or config.log_addr:
        from agent import logsink

        log_sink = logsink.install(config)  # from here on, lines go to the host's log port
    logger = log.logger("root")
    if init_mode:
        init.finish_init(config)
    log.announce(config, AGENT_VERSION)

    from agent.app import Agent

    agent = Agent(config)
    try:
        agent.start()
    except (OSError, ValueError) as exc:
        logger.error("cannot serve", address=config.server_addr, error=str(exc))
        if log_sink is not None:
            log_sink.close()
        return 1
    if log_sink is not None:
        log_sink.attach(agent)
    if config.debug_console:
        from agent import debug_console

        debug_console.start(agent)
    if config.tracing:
        from agent import tracing

        tracing.install(agent)
    for signum in (signal.SIGTERM, signal.SIGINT):
        agent.loop.add_signal_handler(signum, lambda s: (logger.info("stopping", signal=s), agent.stop()))
    logger.info("serving", address=config.server_addr)
    try:
        agent.run()
    finally:
        agent.close()
    logger.info("stopped")
    if log_sink is not None:
        log_sink.close()
    if init_mode and agent.power_off_requested:
        init.power_off()
    return 0
