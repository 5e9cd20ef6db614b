"""Interoperability with the Go reference ttRPC library (containerd/ttrpc 1.1.1).

Both directions: the Go client runs its checks against our agent, and our Python client
talks to the Go reference server. Either side disagreeing with Go is a bug on our side,
since the Kata runtime speaks the Go library.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import gopeer
import pytest
from google.protobuf.message import Message

from agent.protocols import health_pb2
from ttrpc.client import Client
from ttrpc.status import Code, RPCError

#: The Go client's checks that every conforming server passes (see src/ttrpcpeer/client.go).
GO_CHECKS = [
    "check",
    "version",
    "metadata",
    "deadline",
    "deadline-expired",
    "unknown-method",
    "unknown-service",
    "oversize",
    "concurrent",
    "even-stream",
    "bad-request",
]


def run_go_client(peer: Path, addr: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(peer), "client", addr, *args], capture_output=True, text=True, timeout=300)


def check(client: Client) -> int:
    req = health_pb2.CheckRequest()
    return client.call("grpc.Health", "Check", req, health_pb2.HealthCheckResponse).status


def peer_call(client: Client, method: str, request: Message, reply_type: type[Message], **kw: Any) -> Any:
    """A call to the Go peer's ttrpcpeer.Test service."""
    return client.call("ttrpcpeer.Test", method, request, reply_type, **kw)


# ---------------------------------------------------------------- Go client -> our agent


@pytest.mark.parametrize("name", GO_CHECKS)
def test_go_client_against_agent(peer: Path, agent_addr: str, name: str) -> None:
    proc = run_go_client(peer, agent_addr, "-only", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"PASS {name}:"), proc.stdout


def test_go_client_all_checks_on_one_agent_connection(peer: Path, agent_addr: str) -> None:
    """The same checks in sequence, sharing one client connection, as the runtime does."""
    proc = run_go_client(peer, agent_addr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASS ") == len(GO_CHECKS), proc.stdout


def test_go_client_blocking_call_gets_deadline_without_stalling_others(peer: Path, agent_addr: str) -> None:
    """GetOOMEvent blocks until an OOM; with timeout_nano=5s the agent must answer the Check sent
    after it first, then DEADLINE_EXCEEDED on the GetOOMEvent stream."""
    proc = run_go_client(peer, agent_addr, "-only", "slow-deadline", "-slow", "grpc.AgentService/GetOOMEvent")
    if 'Unimplemented "/grpc.AgentService/GetOOMEvent' in proc.stdout:
        pytest.xfail("the agent does not implement GetOOMEvent yet")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_go_client_against_agent_on_abstract_socket(peer: Path) -> None:
    addr = f"unix://@kata-interop-{os.getpid()}-{time.monotonic_ns()}"
    agent = gopeer.start_agent(addr)
    try:
        proc = run_go_client(peer, addr, "-only", "check,version,concurrent")
    finally:
        agent.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_go_reference_server_passes_the_same_checks(peer: Path, go_addr: str) -> None:
    """Guards the checks themselves: the Go reference must pass all of them."""
    proc = run_go_client(peer, go_addr, "-slow", "ttrpcpeer.Test/Sleep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASS ") == len(GO_CHECKS) + 1, proc.stdout


# ---------------------------------------------------------------- our client -> Go server


@pytest.fixture
def client(go_addr: str):
    with Client(go_addr) as c:
        yield c


def test_health_against_go_server(client: Client) -> None:
    assert check(client) == health_pb2.HealthCheckResponse.SERVING
    v = client.call("grpc.Health", "Version", health_pb2.CheckRequest(), health_pb2.VersionCheckResponse)
    assert (v.agent_version, v.grpc_version) == ("ttrpcpeer-go", "containerd-ttrpc-1.1.1")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (Code.NOT_FOUND, "container abc not found"),
        (Code.INVALID_ARGUMENT, "Link not found"),
        (Code.FAILED_PRECONDITION, "ESRCH: No such process"),
        (Code.ALREADY_EXISTS, "sandbox already exists"),
        (Code.UNKNOWN, "ünïcode ✓ message"),
        (Code.INTERNAL, ""),
        (Code.UNAVAILABLE, "x" * 10000),
        (Code.UNAUTHENTICATED, "last code"),
    ],
)
def test_error_codes_and_messages_from_go(client: Client, peer_msgs: dict, code: Code, message: str) -> None:
    with pytest.raises(RPCError) as exc:
        peer_call(client, "Fail", peer_msgs["FailRequest"](code=code, message=message), peer_msgs["Empty"])
    assert exc.value.code == code
    assert exc.value.message == message


def test_unknown_method_on_go_server(client: Client, peer_msgs: dict) -> None:
    with pytest.raises(RPCError) as exc:
        peer_call(client, "Nope", peer_msgs["Empty"](), peer_msgs["Empty"])
    assert exc.value.code == Code.UNIMPLEMENTED
    assert exc.value.message == "method Nope"
    with pytest.raises(RPCError) as exc:
        client.call("no.Such", "Check", peer_msgs["Empty"](), peer_msgs["Empty"])
    assert (exc.value.code, exc.value.message) == (Code.UNIMPLEMENTED, "service no.Such")


def test_deadline_reaches_go_server(client: Client, peer_msgs: dict) -> None:
    reply = peer_call(client, "Echo", peer_msgs["EchoRequest"](text="t"), peer_msgs["EchoReply"], timeout=7.0)
    assert reply.has_deadline
    assert 0 < reply.deadline_remaining_ms <= 7000


def test_metadata_reaches_go_server(client: Client, peer_msgs: dict) -> None:
    md = {"b-key": ["1", "2"], "a-key": ["x"]}
    reply = peer_call(client, "Echo", peer_msgs["EchoRequest"](), peer_msgs["EchoReply"], metadata=md)
    assert [(kv.key, kv.value) for kv in reply.metadata] == [("a-key", "x"), ("b-key", "1"), ("b-key", "2")]


def test_slow_call_times_out_without_blocking_others(client: Client, peer_msgs: dict) -> None:
    """A call the server never finishes ends in DEADLINE_EXCEEDED; meanwhile the connection serves."""
    outcome: list[BaseException] = []

    def slow() -> None:
        try:
            peer_call(client, "Sleep", peer_msgs["SleepRequest"](millis=0), peer_msgs["Empty"], timeout=5.0)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    t = threading.Thread(target=slow)
    t.start()
    try:
        assert check(client) == health_pb2.HealthCheckResponse.SERVING
        assert t.is_alive(), "Check should have been answered while Sleep was still pending"
    finally:
        t.join(60)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], RPCError), outcome
    assert outcome[0].code == Code.DEADLINE_EXCEEDED
    assert check(client) == health_pb2.HealthCheckResponse.SERVING


def test_large_messages_both_ways(client: Client, peer_msgs: dict) -> None:
    text = "k" * (3 << 20)
    reply = peer_call(
        client, "Echo", peer_msgs["EchoRequest"](text=text, pad_bytes=512 << 10), peer_msgs["EchoReply"]
    )
    assert reply.text == text
    assert reply.padding == bytes(512 << 10)


def test_oversized_request_is_refused_and_connection_survives(client: Client, peer_msgs: dict) -> None:
    with pytest.raises(RPCError) as exc:
        peer_call(client, "Echo", peer_msgs["EchoRequest"](text="x" * (5 << 20)), peer_msgs["EchoReply"])
    assert exc.value.code == Code.RESOURCE_EXHAUSTED
    assert check(client) == health_pb2.HealthCheckResponse.SERVING


def test_oversized_response_is_refused_and_connection_survives(client: Client, peer_msgs: dict) -> None:
    """The Go server sends a 5 MiB response; like the Go client, we fail only that call."""
    with pytest.raises(RPCError) as exc:
        peer_call(client, "Echo", peer_msgs["EchoRequest"](pad_bytes=5 << 20), peer_msgs["EchoReply"])
    assert exc.value.code == Code.RESOURCE_EXHAUSTED
    assert check(client) == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_calls_multiplex_on_one_connection(client: Client, peer_msgs: dict) -> None:
    """32 threads share one connection; every reply must belong to its own request."""
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            for j in range(20):
                text = f"{i}-{j}-" + "p" * (i * 37)
                reply = peer_call(client, "Echo", peer_msgs["EchoRequest"](text=text), peer_msgs["EchoReply"])
                if reply.text != text:
                    errors.append(f"worker {i} call {j}: got {reply.text[:20]!r}")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(f"worker {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_client_on_abstract_socket(peer: Path) -> None:
    addr = f"unix://@kata-goserver-{os.getpid()}-{time.monotonic_ns()}"
    server = gopeer.start_go_server(peer, addr)
    try:
        with Client(addr) as c:
            assert check(c) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_pending_call_fails_when_go_server_goes_away(peer: Path, peer_msgs: dict, sockdir: Path) -> None:
    """A call the server never answers must fail, not hang, when the connection drops."""
    addr = f"unix://{sockdir}/gone.sock"
    server = gopeer.start_go_server(peer, addr)
    outcome: list[BaseException] = []
    try:
        with Client(addr) as c:

            def forever() -> None:
                try:
                    peer_call(c, "Sleep", peer_msgs["SleepRequest"](millis=0), peer_msgs["Empty"])
                except BaseException as e:  # noqa: BLE001 - handed to the test thread
                    outcome.append(e)

            t = threading.Thread(target=forever)
            t.start()
            assert check(c) == health_pb2.HealthCheckResponse.SERVING  # the Sleep is in flight
            server.stop()
            t.join(60)
            assert not t.is_alive()
            assert len(outcome) == 1 and isinstance(outcome[0], RPCError), outcome
            assert outcome[0].code == Code.UNAVAILABLE
            with pytest.raises(RPCError):
                check(c)
    finally:
        server.stop()
