"""log_vport: the agent's JSON lines go to whoever connects to the log port (unix here)."""

from __future__ import annotations

import json
import signal
import threading
import time
import types

from agent import log
from tests.agent.harness import wait_ready

from .helpers import connect_unix, read_to_eof, read_until, start_features, stop

FIELDS = {"time", "level", "msg", "pid", "subsystem", "name", "source"}


def _lines(data: bytes) -> list[dict]:
    assert data.endswith(b"\n"), "only whole lines are sent"
    out = []
    for line in data.decode().splitlines():
        obj = json.loads(line)  # every line is one JSON object
        assert obj.keys() >= FIELDS, obj
        out.append(obj)
    return out


def test_boot_lines_wait_for_the_host_and_every_line_is_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock, logs = tmp_path / "agent.sock", tmp_path / "log.sock"
    proc = start_features(sock, log_addr=f"unix://{logs}")
    try:
        wait_ready(f"unix://{sock}", proc)
        time.sleep(0.2)  # lines logged with nobody connected stay in the pipe
        conn = connect_unix(logs)
        first = read_until(conn, b'"msg":"serving"')
        proc.send_signal(signal.SIGTERM)
        rest = read_to_eof(conn)  # the agent sends what is left and closes at shutdown
        conn.close()
        proc.wait(10)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    msgs = [line["msg"] for line in _lines(first + rest)]
    assert msgs.index("announce") < msgs.index("serving") < msgs.index("stopped")
    assert "announce" not in err and "serving" not in err, "nothing went to stderr"
    assert not logs.exists()


def test_a_new_connection_replaces_the_old_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock, logs = tmp_path / "agent.sock", tmp_path / "log.sock"
    proc = start_features(sock, log_addr=f"unix://{logs}")
    try:
        wait_ready(f"unix://{sock}", proc)
        with connect_unix(logs) as first:
            read_until(first, b'"msg":"serving"')
        second = connect_unix(logs)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        data = read_to_eof(second)
        second.close()
        proc.wait(10)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert [line["msg"] for line in _lines(data)][-2:] == [
        "stopping",
        "stopped",
    ] or "stopped" in data.decode()


def test_logging_never_blocks_when_nobody_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Far more than the pipe holds, with no peer: lines are dropped whole, the caller never waits."""
    from agent import logsink
    from agent.config import AgentConfig
    from ttrpc.loop import Loop

    path = tmp_path / "log.sock"
    loop = Loop()
    closers: list = []
    sink = logsink.install(AgentConfig(), address=f"unix://{path}")
    assert sink is not None
    try:
        sink.attach(types.SimpleNamespace(loop=loop, on_close=closers.append))
        lg = log.logger("flood")
        t0 = time.monotonic()
        for i in range(40000):  # ~6 MiB of lines
            lg.info("flood line", i=i, pad="x" * 100)
        assert time.monotonic() - t0 < 20
        conn = connect_unix(path)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(read_to_eof(conn)))
        reader.start()
        deadline = time.monotonic() + 5
        while sink.connections == 0 and time.monotonic() < deadline:
            loop.run_once(0.05)
        for closer in closers:
            closer()
        sink.close()
        reader.join(20)
        conn.close()
        data = got[0]
    finally:
        log.set_output(2)
        loop.close()
    lines = _lines(data)
    numbers = [line["i"] for line in lines]
    assert numbers == sorted(numbers) and numbers[0] == 0, "the first lines were kept, in order"
    assert 100 < len(lines) < 40000, "some lines were kept, the rest dropped"
