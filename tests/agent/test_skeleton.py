"""The agent process: address resolution, Health, every method registered, clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from google.protobuf import empty_pb2

from agent.protocols import agent_pb2, health_pb2
from agent.version import AGENT_VERSION, API_VERSION
from tests.agent.harness import start_agent, stop_agent, wait_ready
from ttrpc.status import Code, RPCError


@pytest.fixture
def running(tmp_path):  # type: ignore[no-untyped-def]
    sock = tmp_path / "agent.sock"
    proc = start_agent(sock)
    client = wait_ready(f"unix://{sock}", proc)
    yield sock, proc, client
    client.close()
    stop_agent(proc)


def test_health_check_and_version(running) -> None:  # type: ignore[no-untyped-def]
    _, _, client = running
    reply = client.call("grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    ver = client.call("grpc.Health", "Version", health_pb2.CheckRequest(), health_pb2.VersionCheckResponse)
    assert (ver.agent_version, ver.grpc_version) == (AGENT_VERSION, API_VERSION)


def test_every_contract_method_is_registered(running) -> None:  # type: ignore[no-untyped-def]
    """Every method is registered: an undecodable request is refused by that method's decoder
    (INVALID_ARGUMENT) instead of the server's UNIMPLEMENTED for unknown methods.  No handler
    runs, so nothing acts on this machine."""
    _, _, client = running

    class Garbage:
        def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf method name
            return b"\xff\xff\xff"

    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    assert len(service.methods) == 42
    for m in service.methods:
        with pytest.raises(RPCError) as err:
            client.call("grpc.AgentService", m.name, Garbage(), empty_pb2.Empty, timeout=10)  # type: ignore[arg-type]
        assert err.value.code == Code.INVALID_ARGUMENT, (m.name, err.value)
        assert "unmarshal request" in err.value.message
    with pytest.raises(RPCError) as err:
        client.call("grpc.AgentService", "NoSuchMethod", empty_pb2.Empty(), empty_pb2.Empty)
    assert err.value.code == Code.UNIMPLEMENTED


def test_unimplemented_method_names_itself(running) -> None:  # type: ignore[no-untyped-def]
    """A routed method whose module is missing answers UNIMPLEMENTED with its own name."""
    from agent.service import _LazyHandler

    handler = _LazyHandler(None, "Imaginary", ("agent.service.no_such_module", "fn"))
    with pytest.raises(RPCError) as err:
        handler(empty_pb2.Empty(), None)  # type: ignore[arg-type]
    assert err.value.code == Code.UNIMPLEMENTED
    assert "/grpc.AgentService/Imaginary" in err.value.message


def test_sigterm_removes_socket(running) -> None:  # type: ignore[no-untyped-def]
    sock, proc, _ = running
    assert sock.exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not sock.exists()


def test_sigint_also_stops_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "a.sock"
    proc = start_agent(sock)
    wait_ready(f"unix://{sock}", proc).close()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert not sock.exists()


def test_env_overrides_default_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "env.sock"
    proc = start_agent(sock, env={"KATA_AGENT_SERVER_ADDR": f"unix://{sock}"})
    try:
        wait_ready(f"unix://{sock}", proc).close()
    finally:
        stop_agent(proc)


def test_logs_are_json_lines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "log.sock"
    proc = start_agent(sock, "--log-level", "debug")
    wait_ready(f"unix://{sock}", proc).close()
    stop_agent(proc)
    lines = [ln for ln in proc.stderr.read().decode().splitlines() if ln.strip()]
    assert lines, "the agent logged nothing"
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "msg"} <= set(record)


def test_bad_address_is_a_clear_startup_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [sys.executable, "-m", "agent", "--server-addr", "tcp://1.2.3.4:5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "tcp://1.2.3.4:5" in out.stderr


def test_ctl_check_version_and_call(running) -> None:  # type: ignore[no-untyped-def]
    sock, _, _ = running
    base = [sys.executable, "-m", "agent.ctl", "--addr", f"unix://{sock}"]
    out = subprocess.run([*base, "check"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout) == {"status": "SERVING"}
    out = subprocess.run([*base, "version"], capture_output=True, text=True, timeout=30)
    assert json.loads(out.stdout)["agent_version"] == AGENT_VERSION
    out = subprocess.run(
        [*base, "call", "Health.Check", '{"service": "x"}'], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "SERVING"
    # an error: status name and number on stderr, non-zero exit (the mem-agent is off, as upstream)
    out = subprocess.run(
        [*base, "call", "MemAgentMemcgSet", "{}"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    err = json.loads(out.stderr)
    assert Code[err["error"]] == err["code"] == Code.INTERNAL and "disabled" in err["message"]
    out = subprocess.run(
        [*base, "call", "CreateSandbox", '{"nope": 1}'], capture_output=True, text=True, timeout=30
    )
    assert out.returncode != 0 and "bad JSON" in out.stderr
