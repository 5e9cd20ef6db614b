"""Our server and our client over real unix sockets."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from agent.protocols.health_pb2 import CheckRequest
from tests.ttrpc.peer import SERVICE, RawPeer, raw_request, serving, status_name
from ttrpc.client import Client
from ttrpc.frame import MAX_DATA, encode_header
from ttrpc.status import Code, RPCError


@pytest.fixture
def sock_path(tmp_path):  # type: ignore[no-untyped-def]
    return str(tmp_path / "peer.sock")


@pytest.fixture
def peer(sock_path):  # type: ignore[no-untyped-def]
    with serving(f"unix://{sock_path}") as p:
        yield p


def call(client: Client, method: str, text: str = "", **kw: object) -> str:
    return client.call(SERVICE, method, CheckRequest(service=text), CheckRequest, **kw).service  # type: ignore[arg-type]


def test_unary_and_errors(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        assert call(c, "Echo", "hello") == "hello"
        with pytest.raises(RPCError) as err:
            call(c, "Fail", "5:no such thing")
        assert err.value.code == Code.NOT_FOUND and err.value.message == "no such thing"
        with pytest.raises(RPCError) as err:
            call(c, "Boom")
        assert err.value.code == Code.UNKNOWN and "handler blew up" in err.value.message
        with pytest.raises(RPCError) as err:
            c.call("test.Nope", "Echo", CheckRequest(), CheckRequest)
        assert err.value.code == Code.UNIMPLEMENTED and "test.Nope" in err.value.message
        with pytest.raises(RPCError) as err:
            c.call(SERVICE, "Nope", CheckRequest(), CheckRequest)
        assert err.value.code == Code.UNIMPLEMENTED and "Nope" in err.value.message
        assert call(c, "Echo", "still fine") == "still fine"


def test_metadata_and_deadline_reach_the_handler(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        seen = json.loads(call(c, "Meta", metadata={"trace": ["a", "b"], "x": ["1"]}, timeout=30))
    assert seen["metadata"] == {"trace": ["a", "b"], "x": ["1"]}
    assert 0 < seen["remaining"] <= 30


def test_deadline_exceeded_from_server(peer, sock_path) -> None:  # type: ignore[no-untyped-def]
    raw = RawPeer(sock_path)
    from ttrpc.frame import encode_frame
    from ttrpc.protocols import ttrpc_pb2

    req = ttrpc_pb2.Request(
        service=SERVICE,
        method="Slow",
        payload=CheckRequest(service="30").SerializeToString(),
        timeout_nano=50_000_000,
    )
    raw.send(encode_frame(1, 1, 0, req.SerializeToString()))
    resp = raw.responses([1])[1]
    assert status_name(resp.code) == "DEADLINE_EXCEEDED"
    raw.close()
    # the handler was told to give up (its timer cancelled)
    deadline = time.monotonic() + 5
    while not peer.recorder.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert peer.recorder.cancelled == ["slow:1"]


def test_client_deadline(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        with pytest.raises(RPCError) as err:
            call(c, "Slow", "10", timeout=0.2)
        assert err.value.code == Code.DEADLINE_EXCEEDED
        assert call(c, "Echo", "after") == "after"


def test_slow_call_does_not_delay_others(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(call(c, "Slow", "3")))
        t.start()
        time.sleep(0.1)
        start = time.monotonic()
        for _ in range(20):
            assert call(c, "Echo", "x") == "x"
        assert time.monotonic() - start < 2.5  # generous: the slow call takes 3 s
        assert not result
        t.join()
        assert result == ["slow done"]


def test_blocking_work_runs_in_pool(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        assert call(c, "Blocking", "0.05").startswith("slept in ttrpc-pool")


def test_many_concurrent_calls_on_one_connection(peer) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    with Client(peer.address) as c:

        def worker(n: int) -> None:
            try:
                for i in range(50):
                    text = f"{n}-{i}"
                    assert call(c, "Echo", text) == text
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_client_streaming(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        s = c.stream(SERVICE, "Collect", client_streaming=True, server_streaming=False)
        for part in ("a", "b", "c"):
            s.send(CheckRequest(service=part))
        s.close_send()
        assert s.finish(CheckRequest).service == "abc"


def test_server_streaming(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        s = c.stream(
            SERVICE, "Count", CheckRequest(service="5"), client_streaming=False, server_streaming=True
        )
        got = []
        while (msg := s.recv(CheckRequest, timeout=5)) is not None:
            got.append(msg.service)
        assert got == ["0", "1", "2", "3", "4"]
        s.finish()


def test_bidirectional_streaming(peer) -> None:  # type: ignore[no-untyped-def]
    with Client(peer.address) as c:
        s = c.stream(SERVICE, "Chat", client_streaming=True, server_streaming=True)
        for word in ("ping", "pong"):
            s.send(CheckRequest(service=word))
            assert s.recv(CheckRequest, timeout=5).service == word.upper()
        s.close_send()
        assert s.recv(CheckRequest, timeout=5) is None
        s.finish()


def test_oversized_frame_answered_and_connection_survives(peer, sock_path) -> None:  # type: ignore[no-untyped-def]
    raw = RawPeer(sock_path)
    big = 5 * 1024 * 1024
    raw.send(encode_header(big, 1, 1, 0))
    raw.send(b"\0" * big)
    raw.send(raw_request(3, SERVICE, "Echo", CheckRequest(service="ok").SerializeToString()))
    got = raw.responses([1, 3])
    assert status_name(got[1].code) == "RESOURCE_EXHAUSTED"
    assert str(MAX_DATA) in got[1].message
    assert got[3].code == 0 and CheckRequest.FromString(got[3].payload).service == "ok"
    raw.close()


def test_protocol_violations_answered(peer, sock_path) -> None:  # type: ignore[no-untyped-def]
    raw = RawPeer(sock_path)
    raw.send(raw_request(2, SERVICE, "Echo"))  # even id
    raw.send(raw_request(5, SERVICE, "Echo", b"\xff\xff"))  # undecodable payload
    got = raw.responses([2, 5])
    assert status_name(got[2].code) == "INVALID_ARGUMENT"
    assert status_name(got[5].code) == "INVALID_ARGUMENT"
    raw.send(raw_request(3, SERVICE, "Echo"))  # reused/lower id
    assert status_name(raw.responses([3])[3].code) == "INVALID_ARGUMENT"
    raw.close()


def test_client_vanishing_cancels_its_calls(peer) -> None:  # type: ignore[no-untyped-def]
    c = Client(peer.address)
    t = threading.Thread(target=lambda: pytest.raises(RPCError, call, c, "Slow", "30"))
    t.start()
    time.sleep(0.2)
    c.close()
    t.join(5)
    deadline = time.monotonic() + 5
    while not peer.recorder.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(peer.recorder.cancelled) == 1
    assert peer.on_loop(lambda: peer.server.connection_count) == 0


def test_connections_opened_and_dropped_leave_nothing(peer, sock_path) -> None:  # type: ignore[no-untyped-def]
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        s.send(encode_header(100, 1, 1, 0))  # a partial frame, then gone
        s.close()
    with Client(peer.address) as c:
        assert call(c, "Echo", "alive") == "alive"
    deadline = time.monotonic() + 5
    while peer.on_loop(lambda: peer.server.connection_count) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert peer.on_loop(lambda: peer.server.connection_count) == 0
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_reader_that_never_reads_is_paused_not_buffered(sock_path) -> None:  # type: ignore[no-untyped-def]
    with serving(f"unix://{sock_path}", write_limit=256 * 1024) as p:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(sock_path)
        s.setblocking(False)
        payload = CheckRequest(service="y" * 60000).SerializeToString()
        sid = 1
        sent_requests = 0
        try:
            for _ in range(400):
                s.send(raw_request(sid, SERVICE, "Echo", payload))
                sid += 2
                sent_requests += 1
        except BlockingIOError:
            pass
        time.sleep(0.5)

        def outbuf() -> int:
            return max((len(conn._outbuf) for conn in p.server._connections), default=0)

        # pending replies stay near the limit instead of growing with every request
        assert p.on_loop(outbuf) <= 256 * 1024 + 2 * 70000
        with Client(p.address) as c:
            assert call(c, "Echo", "other clients still served") == "other clients still served"
        s.close()


def test_vanished_server_fails_pending_calls(sock_path) -> None:  # type: ignore[no-untyped-def]
    peer = serving(f"unix://{sock_path}")
    p = peer.__enter__()
    c = Client(p.address)
    errors: list[RPCError] = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RPCError, call, c, "Slow", "30").value))
    t.start()
    time.sleep(0.2)
    peer.__exit__(None, None, None)
    t.join(5)
    assert errors and errors[0].code in (Code.UNAVAILABLE,)
    c.close()


def test_big_replies_while_server_pauses_our_writes(sock_path) -> None:  # type: ignore[no-untyped-def]
    """Senders blocked in sendall must not stop the client's reader (no mutual stall)."""
    with serving(f"unix://{sock_path}", write_limit=128 * 1024) as p, Client(p.address) as c:
        text = "z" * (1024 * 1024)
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(10):
                    assert len(call(c, "Echo", text, timeout=60)) == len(text)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "client and server stalled each other"
        assert errors == []


def test_interceptors_see_refuse_and_replace(sock_path) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[str, int]] = []
    with serving(f"unix://{sock_path}") as p:

        def interceptor(ctx, request):  # type: ignore[no-untyped-def]
            if request is not None and request.service == "forbidden":
                raise RPCError("policy says no", Code.PERMISSION_DENIED)

            def on_done(response, code, message):  # type: ignore[no-untyped-def]
                seen.append((ctx.method, code))
                if response is not None and response.service == "secret":
                    return CheckRequest(service="")
                return response

            return on_done

        p.on_loop(p.server.interceptors.append, interceptor)
        with Client(p.address) as c:
            assert call(c, "Echo", "hi") == "hi"
            assert call(c, "Echo", "secret") == ""
            with pytest.raises(RPCError) as err:
                call(c, "Echo", "forbidden")
            assert err.value.code == Code.PERMISSION_DENIED
            with pytest.raises(RPCError):
                call(c, "Fail", "5:gone")
    assert seen == [("Echo", 0), ("Echo", 0), ("Fail", 5)]


def test_connection_limit_evicts_idle_half_open_connections_first(sock_path) -> None:  # type: ignore[no-untyped-def]
    with serving(f"unix://{sock_path}", max_connections=4) as p:
        runtime = Client(p.address)  # the real client: it has completed calls
        assert call(runtime, "Echo", "first") == "first"
        squatters = []
        for _ in range(6):  # more half-frame connections than the limit allows
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock_path)
            s.sendall(b"\0\0\0")
            squatters.append(s)
            time.sleep(0.05)
        with Client(p.address) as newcomer:
            assert call(newcomer, "Echo", "let in") == "let in"
        # the connection that had answered calls was not the one sacrificed
        assert call(runtime, "Echo", "still here") == "still here"
        assert p.on_loop(lambda: p.server.connection_count) <= 4
        runtime.close()
        for s in squatters:
            s.close()
