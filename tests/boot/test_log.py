"""JSON-lines logging: every line parses, filtering is cheap, sinks never raise."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from agent import log
from agent.config import AgentConfig

from .nsrun import python_env

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


@pytest.fixture
def sink():
    """Point the logger at a pipe; restore stderr and the level afterwards."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    log.configure(level="info", output=w)

    def lines() -> list[dict]:
        chunks = []
        while True:
            try:
                data = os.read(r, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        text = b"".join(chunks).decode()
        assert text == "" or text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]

    yield lines
    log.configure(level="info", output=2)
    os.close(r)
    os.close(w)


def test_lines_are_json_with_the_standard_fields(sink):
    before = time.time()
    lg = log.logger("sandbox")
    lg.info("created", sandbox_id="abc", count=3, ok=True, nothing=None, ratio=0.5)
    lg.warn("odd", data=b"\xffbin", err=OSError(2, "gone"), nested={"a": [1, (2, 3)]}, nan=float("nan"))
    lg.error('quote " backslash \\ newline \n tab \t unicode é \udc80')
    first, second, third = sink()

    assert first["msg"] == "created" and first["level"] == "info"
    assert (first["pid"], first["subsystem"], first["source"]) == (os.getpid(), "sandbox", "agent")
    assert first["name"] == "kata-agent"
    assert (first["sandbox_id"], first["count"], first["ok"], first["nothing"], first["ratio"]) == (
        "abc",
        3,
        True,
        None,
        0.5,
    )
    assert RFC3339_NS.match(first["time"])
    stamp = time.mktime(time.strptime(first["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 2 <= stamp <= time.time() + 1
    assert list(first)[:7] == ["time", "level", "msg", "pid", "subsystem", "name", "source"]

    assert second["level"] == "warn"
    assert second["data"] == "\\xffbin"
    assert second["err"] == "FileNotFoundError: [Errno 2] gone"
    assert second["nested"] == {"a": [1, [2, 3]]}
    assert second["nan"] == "nan"
    assert third["msg"] == 'quote " backslash \\ newline \n tab \t unicode é \udc80'


def test_levels_filter_and_cost_nothing_when_filtered(sink, monkeypatch):
    lg = log.logger("filter")
    calls = []
    real = log._emit
    monkeypatch.setattr(log, "_emit", lambda *a: (calls.append(a[0]), real(*a)))
    log.set_level("warn")
    for name in ("trace", "debug", "info", "warn", "error", "critical"):
        getattr(lg, name)(name)
    assert calls == [log.WARN, log.ERROR, log.CRITICAL]  # filtered lines are never built
    assert [line["level"] for line in sink()] == ["warn", "error", "critical"]
    assert not lg.enabled(log.INFO) and lg.enabled(log.ERROR)

    log.set_level("trace")
    lg.trace("t")
    lg.log(log.DEBUG, "d")
    assert [line["level"] for line in sink()] == ["trace", "debug"]
    assert log.get_level() == "trace"


def test_level_names():
    assert log.normalize_level("WARNING") == "warn"
    assert log.normalize_level("fatal") == log.normalize_level("panic") == "critical"
    with pytest.raises(ValueError):
        log.normalize_level("loud")


def test_bound_fields_and_reserved_names(sink):
    lg = log.logger("rpc").bind(sandbox="s1", container="c1")
    lg.info("call", method="Check", msg_="x", level="mine", pid=0)
    (line,) = sink()
    assert (line["sandbox"], line["container"], line["method"]) == ("s1", "c1", "Check")
    assert line["level"] == "info" and line["pid"] == os.getpid()
    assert line["field.level"] == "mine" and line["field.pid"] == 0
    assert log.logger("rpc") is log.logger("rpc")


def test_unprintable_values_do_not_raise(sink):
    class Bad:
        def __str__(self):
            raise RuntimeError("no")

    cycle: list = []
    cycle.append(cycle)
    log.logger("x").info("weird", bad=Bad(), cycle=cycle)
    (line,) = sink()
    assert line["bad"] == "<unprintable Bad>"
    assert isinstance(line["cycle"], list)


def test_broken_pipe_closed_fd_and_full_socket_never_raise():
    lg = log.logger("sink")
    try:
        r, w = os.pipe()
        os.close(r)
        log.set_output(w)
        lg.error("into a broken pipe")  # EPIPE (SIGPIPE is ignored by Python)
        os.close(w)
        lg.error("into a closed fd")  # EBADF

        a, b = socket.socketpair()
        a.setblocking(False)
        log.set_output(a)
        started = time.monotonic()
        for _ in range(2000):  # far more than the socket buffer holds
            lg.error("x" * 1000)
        assert time.monotonic() - started < 30  # dropped, not blocked
        a.close()
        b.close()
    finally:
        log.set_output(2)


def test_fresh_process_survives_a_dead_sink():
    code = (
        "import os; from agent import log; r, w = os.pipe(); os.close(r); "
        "log.set_output(w); log.logger('x').error('gone'); print('alive')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "alive"


def test_child_after_fork_logs_its_own_pid(sink):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        log.set_output(w)
        log.logger("child").info("hi")
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    assert json.loads(data)["pid"] == pid


def test_announce(sink):
    config = AgentConfig().replace(log_level="debug")
    log.announce(config, "1.2.3")
    (line,) = sink()
    assert line["msg"] == "announce" and line["subsystem"] == "root"
    assert line["agent-version"] == "1.2.3"
    assert line["init-mode"] is False
    assert line["config"]["log_level"] == "debug"
    assert line["config"]["server_addr"] == "vsock://-1:1024"


def test_stderr_output_parses_line_by_line():
    code = (
        "from agent import log\n"
        "log.set_level('debug')\n"
        "for i in range(200):\n"
        "    log.logger('s').debug('line', i=i, text='a\\nb')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert proc.returncode == 0
    lines = [json.loads(x) for x in proc.stderr.splitlines()]
    assert [x["i"] for x in lines] == list(range(200))


def test_import_is_light():
    code = (
        "import sys; import agent.log; "
        "print(sorted(m for m in ('json', 'logging', 're', 'datetime') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_nonblocking_pipe_keeps_lines_whole():
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        log.set_output(w)
        for i in range(50):
            log.logger("nb").info("small", i=i)
    finally:
        log.set_output(2)
        os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    assert [json.loads(x)["i"] for x in data.splitlines()] == list(range(50))
