"""An idle agent imports none of issue 5's optional features: they load only when switched on."""

from __future__ import annotations

import subprocess
import sys

from tests.agent.harness import wait_ready

from .helpers import REPO, agent_env, stop

OPTIONAL = (
    "agent.debug_console",
    "agent.tracing",
    "agent.logsink",
    "agent.trace_cmd",
    "opentelemetry",
    "ptrace",
)


def test_idle_agent_imports_no_optional_feature(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "agent.sock"
    env = agent_env(KATA_AGENT_SERVER_ADDR=f"unix://{sock}", KATA_AGENT_CMDLINE_PATH=str(tmp_path / "none"))
    (tmp_path / "none").write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "agent"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(f"unix://{sock}", proc)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    modules = {line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "agent.app" in modules, "the import log was read"
    loaded = sorted(m for m in modules if m.startswith(OPTIONAL))
    assert loaded == []
