"""Addresses (unix path, abstract, vsock) and the loop's timers, threads and signals."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from agent.protocols.health_pb2 import CheckRequest
from tests.ttrpc.peer import SERVICE, serving
from ttrpc.address import VMADDR_CID_ANY, AddressError, parse_address
from ttrpc.client import Client
from ttrpc.loop import Future, Loop


def test_parse_forms() -> None:
    a = parse_address("unix:///run/a.sock")
    assert (a.family, a.sockaddr, a.path) == (socket.AF_UNIX, "/run/a.sock", "/run/a.sock")
    b = parse_address("unix://@kata")
    assert b.sockaddr == "\0kata" and b.path is None
    v = parse_address("vsock://-1:1024")
    assert v.family == socket.AF_VSOCK and v.sockaddr == (VMADDR_CID_ANY, 1024)
    assert parse_address("vsock://3:5000").sockaddr == (3, 5000)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/tmp/x",
        "tcp://1.2.3.4:5",
        "unix://relative",
        "unix://@",
        "vsock://x:1",
        "vsock://3",
        "vsock://-2:1",
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(AddressError):
        parse_address(bad)


def test_abstract_socket_round_trip() -> None:
    name = f"unix://@kata-agent-test-{os.getpid()}"
    with serving(name) as p, Client(p.address) as c:
        assert c.call(SERVICE, "Echo", CheckRequest(service="abs"), CheckRequest).service == "abs"


def test_stale_socket_file_replaced_and_removed_on_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with serving(f"unix://{path}") as p, Client(p.address) as c:
        assert c.call(SERVICE, "Echo", CheckRequest(service="x"), CheckRequest).service == "x"
    assert not path.exists()


def test_vsock_listen_any_cid() -> None:
    from ttrpc.server import Server

    loop = Loop()
    server = Server(loop)
    sock = server.listen("vsock://-1:31415")
    assert sock.getsockname() == (VMADDR_CID_ANY, 31415)
    server.close()
    loop.close()


def test_timers_order_and_cancel() -> None:
    loop = Loop()
    seen: list[str] = []
    loop.call_later(0.05, seen.append, "b")
    loop.call_later(0.01, seen.append, "a")
    h = loop.call_later(0.02, seen.append, "never")
    h.cancel()
    done: Future[None] = Future()
    loop.call_later(0.1, done.set_result, None)
    loop.run_until(done, timeout=5)
    assert seen == ["a", "b"]
    loop.close()


def test_thread_pool_results_and_errors_come_back_to_loop() -> None:
    loop = Loop(pool_size=2)
    main = threading.get_ident()
    ok = loop.run_in_thread(lambda: threading.get_ident())
    bad = loop.run_in_thread(lambda: 1 / 0)
    where: list[int] = []
    ok.add_done_callback(lambda f: where.append(threading.get_ident()))
    assert loop.run_until(ok, timeout=5) != main
    with pytest.raises(ZeroDivisionError):
        loop.run_until(bad, timeout=5)
    assert where == [main]
    loop.close()


def test_pool_queue_bound_gives_resource_exhausted() -> None:
    from ttrpc.status import Code, RPCError

    loop = Loop(pool_size=1, pool_queue=2)
    gate = threading.Event()
    futs = [loop.run_in_thread(gate.wait, 5) for _ in range(6)]
    refused = [f for f in futs if f.done() and isinstance(f.exception(), RPCError)]
    assert refused and all(f.exception().code == Code.RESOURCE_EXHAUSTED for f in refused)
    gate.set()
    loop.close()


def test_signal_delivered_through_loop() -> None:
    loop = Loop()
    got: Future[int] = Future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert loop.run_until(got, timeout=5) == signal.SIGUSR1
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_callback_exception_does_not_stop_loop(capsys) -> None:  # type: ignore[no-untyped-def]
    loop = Loop()
    loop.call_soon(lambda: 1 / 0)
    done: Future[str] = Future()
    loop.call_soon(done.set_result, "after")
    assert loop.run_until(done, timeout=5) == "after"
    assert "ZeroDivisionError" in capsys.readouterr().err
    loop.close()
