"""``kata-agent`` itself switches the features on from its configuration (env here, as a guest's
kernel command line would): log port, tracing, debug console, and ``kata-agent trace``."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys

import pytest

import agent.cli
from agent.config import OPTIONS
from agent.protocols import health_pb2
from tests.agent.harness import wait_ready

from .helpers import REPO, agent_env, connect_unix, read_to_eof, read_until, stop

_SOURCE = inspect.getsource(agent.cli)
_NAMES = {o.name for o in OPTIONS}
wired = pytest.mark.skipif(
    not ({"debug_console_addr", "log_addr", "trace_addr"} <= _NAMES and "tracing.install" in _SOURCE),
    reason="agent.cli/agent.config do not wire issue 5's features yet (see the issue 5 report)",
)


def _agent(tmp_path, **env: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("\n")
    full = agent_env(
        KATA_AGENT_SERVER_ADDR=f"unix://{tmp_path}/agent.sock", KATA_AGENT_CMDLINE_PATH=str(cmdline), **env
    )
    return subprocess.Popen(
        [sys.executable, "-m", "agent"], cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@wired
def test_configured_features_start_with_the_agent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("opentelemetry.sdk.trace")
    from .test_tracing import PARENT_ID, TRACE_ID, Collector

    collector = Collector(tmp_path / "collector.sock")
    proc = _agent(
        tmp_path,
        KATA_AGENT_LOG_ADDR=f"unix://{tmp_path}/log.sock",
        KATA_AGENT_TRACING="true",
        KATA_AGENT_TRACE_ADDR=f"unix://{collector.path}",
        KATA_AGENT_DEBUG_CONSOLE="true",
        KATA_AGENT_DEBUG_CONSOLE_ADDR=f"unix://{tmp_path}/console.sock",
    )
    try:
        client = wait_ready(f"unix://{tmp_path}/agent.sock", proc)
        client.call(
            "grpc.Health",
            "Check",
            health_pb2.CheckRequest(),
            health_pb2.HealthCheckResponse,
            timeout=5,
            metadata={"traceparent": [f"00-{TRACE_ID}-{PARENT_ID}-01"]},
        )
        client.close()
        assert any(s.get("parentSpanId") == PARENT_ID for s in collector.wait_for(2))
        with connect_unix(tmp_path / "console.sock") as console:
            console.sendall(b"echo via-$((2*21))\n")
            read_until(console, b"via-42")
        logs = connect_unix(tmp_path / "log.sock")
        read_until(logs, b'"msg":"announce"')
        proc.send_signal(signal.SIGTERM)
        tail = read_to_eof(logs)
        logs.close()
        proc.wait(15)
    finally:
        code, err = stop(proc)
        collector.close()
    assert code == 0, err
    assert b'"msg":"stopped"' in tail
    assert b'"msg":"announce"' not in err.encode(), "the log lines went to the log port"


@wired
def test_kata_agent_trace_subcommand() -> None:
    pytest.importorskip("ptrace.debugger")
    target = subprocess.Popen(["sh", "-c", "while :; do echo x > /dev/null; sleep 0.05; done"])
    try:
        out = subprocess.run(
            [sys.executable, "-m", "agent", "trace", "-n", "5", str(target.pid)],
            cwd=REPO,
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count(f"[{target.pid}] ") >= 5
    finally:
        target.kill()
        target.wait(10)
