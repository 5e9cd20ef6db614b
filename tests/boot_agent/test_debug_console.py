"""The debug console: a shell on a pty per connection, run from the agent's loop and reaper."""

from __future__ import annotations

import os
import re
import select
import time

import pytest

from tests.agent.harness import wait_ready

from .helpers import (
    connect_unix,
    read_to_eof,
    read_until,
    start_features,
    stop,
    wait_gone,
    zombie_children,
)

pytestmark = pytest.mark.skipif(
    not any(os.access(s, os.X_OK) for s in ("/bin/bash", "/bin/sh")), reason="needs a shell"
)


@pytest.fixture
def console(tmp_path):  # type: ignore[no-untyped-def]
    sock = tmp_path / "agent.sock"
    path = tmp_path / "console.sock"
    proc = start_features(sock, console_addr=f"unix://{path}")
    try:
        wait_ready(f"unix://{sock}", proc)
        yield proc, path
    finally:
        code, err = stop(proc)
        assert code == 0, err
        assert not path.exists(), "the console socket file is removed at shutdown"


def _shell_pid(conn) -> int:  # type: ignore[no-untyped-def]
    conn.sendall(b"echo '<''pid='$$'>'\n")
    out = read_until(conn, b">\r\n")
    return int(re.findall(rb"<pid=(\d+)>", out)[-1])


def test_echo_through_a_pty(console) -> None:  # type: ignore[no-untyped-def]
    proc, path = console
    with connect_unix(path) as conn:
        conn.sendall(b"echo hello-$((6*7))\n")
        read_until(conn, b"hello-42")  # the echoed input reads "hello-$((6*7))": the shell ran it
        conn.sendall(b"[ -t 0 ] && [ -t 1 ] && echo on-a-'tty'; tty\n")
        out = read_until(conn, b"on-a-tty")
        out += read_until(conn, b"/dev/pts/")
        pid = _shell_pid(conn)
        # The shell is a session leader on the pty, a child of the agent.
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ppid, sid = int(fields[1]), int(fields[3])
        assert ppid == proc.pid and sid == pid
        conn.sendall(b"exit 3\n")
        read_to_eof(conn)  # the shell's exit closes the connection
    assert wait_gone(pid), "the shell was reaped through the agent's reaper"
    assert zombie_children(proc.pid) == []


def test_connections_get_their_own_shells(console) -> None:  # type: ignore[no-untyped-def]
    _, path = console
    with connect_unix(path) as a, connect_unix(path) as b:
        pid_a, pid_b = _shell_pid(a), _shell_pid(b)
        assert pid_a != pid_b
        a.sendall(b"exit\n")
        read_to_eof(a)
        b.sendall(b"echo still-$((1+1))\n")
        read_until(b, b"still-2")


def test_peer_closing_hangs_the_shell_up(console) -> None:  # type: ignore[no-untyped-def]
    proc, path = console
    conn = connect_unix(path)
    pid = _shell_pid(conn)
    conn.sendall(b"exec sleep 1000\n")  # ignores the ^D the agent sends: needs the hang-up
    time.sleep(0.3)
    conn.close()
    assert wait_gone(pid), "SIGHUP (then SIGKILL) ended the foreground job"
    assert zombie_children(proc.pid) == []


def test_output_larger_than_the_buffers_arrives_whole(console) -> None:  # type: ignore[no-untyped-def]
    _, path = console
    with connect_unix(path) as conn:
        _shell_pid(conn)
        loop = b"i=0; while [ $i -lt 4000 ]; do echo line-$i-" + b"x" * 50 + b"; i=$((i+1)); done"
        conn.sendall(b"stty -echo; " + loop + b"; echo 'the-''end'\n")
        out = read_until(conn, b"the-end", timeout=60)
        lines = re.findall(rb"line-(\d+)-x+\r\n", out)
        assert [int(n) for n in lines] == list(range(4000))


SERIAL = """
import os, sys
from agent import debug_console
from agent.reaper import Reaper
from ttrpc.loop import Loop

loop = Loop()
reaper = Reaper(loop)
reaper.install()
console = debug_console.DebugConsole(loop, reaper, debug_console.find_shell())
pid = console.serial(sys.argv[1])
print(pid, flush=True)
while console.serial_pid:
    loop.run_once(0.1)
reaper.uninstall()
print("exited", flush=True)
"""


def test_serial_console_runs_a_shell_on_the_terminal() -> None:
    """Without a port the shell runs on the console; a pty pair stands in for the serial line."""
    import subprocess
    import sys

    from .helpers import REPO, agent_env

    master, slave = os.openpty()
    tty = os.ttyname(slave)
    os.close(slave)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERIAL, tty], cwd=REPO, env=agent_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(proc.stdout.readline())
        os.write(master, b"echo serial-$((40+2))\n")
        out = b""
        deadline = time.monotonic() + 20
        while b"serial-42" not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                out += os.read(master, 4096)
        assert b"serial-42" in out
        os.write(master, b"exit\n")
        assert proc.stdout.readline().strip() == "exited"
        assert proc.wait(10) == 0
        assert wait_gone(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
