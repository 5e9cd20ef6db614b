"""``python -m tests.hardening.policy_agent``: kata-agent that enforces KATA_AGENT_POLICY_FILE.

Until agent/app.py and agent/config.py install the policy themselves (the
change is in tests/hardening/README.md), this entry point adds exactly that
step -- ``agent.policy.install_file`` before the agent listens -- and is
otherwise ``kata-agent``.  Once the agent knows the ``policy_file`` option it
is a plain pass-through, so the tests exercise the real wiring.
"""

from __future__ import annotations

import os
import sys


def wired() -> bool:
    from agent.config import OPTIONS

    return any(option.name == "policy_file" for option in OPTIONS)


def main() -> int:
    path = os.environ.get("KATA_AGENT_POLICY_FILE")
    if path and not wired():
        from agent.app import Agent

        listen = Agent.start

        def start(self: Agent) -> None:
            from agent.policy import install_file

            install_file(self, path)
            listen(self)

        Agent.start = start  # type: ignore[method-assign]
    from agent.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
