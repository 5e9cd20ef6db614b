"""The runtime argv builders and output parsers (pure functions; real runs are elsewhere)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.errors import Internal
from agent.runtime.bundle import write_config, write_json
from agent.runtime.cli import (
    RuntimeCLI,
    error_message,
    is_missing_container,
    parse_ps,
    parse_state,
)

CRUN = RuntimeCLI(binary="/usr/bin/crun", root="/run/oci")
BASE = ["/usr/bin/crun", "--root", "/run/oci"]


def test_global_options() -> None:
    cli = RuntimeCLI(binary="runc", root="/r", log="/r/log.json", systemd_cgroup=True)
    assert cli.start("c1") == [
        "runc",
        "--root",
        "/r",
        "--log",
        "/r/log.json",
        "--log-format",
        "json",
        "--systemd-cgroup",
        "start",
        "c1",
    ]
    assert cli.flavor == "runc" and CRUN.flavor == "crun"
    assert RuntimeCLI().binary == "crun"


def test_create() -> None:
    assert CRUN.create("c1", "/b", "/b/pid") == [
        *BASE,
        "create",
        "--bundle",
        "/b",
        "--pid-file",
        "/b/pid",
        "c1",
    ]
    assert CRUN.create("c1", "/b", "/b/pid", console_socket="/s", no_pivot=True, preserve_fds=2) == [
        *BASE,
        "create",
        "--bundle",
        "/b",
        "--pid-file",
        "/b/pid",
        "--console-socket",
        "/s",
        "--no-pivot",
        "--preserve-fds",
        "2",
        "c1",
    ]


def test_exec() -> None:
    assert CRUN.exec("c1", "/p.json", "/e.pid") == [
        *BASE,
        "exec",
        "--process",
        "/p.json",
        "--pid-file",
        "/e.pid",
        "--detach",
        "c1",
    ]
    assert CRUN.exec("c1", "/p.json", "/e.pid", detach=False, console_socket="/s")[-3:] == [
        "--console-socket",
        "/s",
        "c1",
    ]


def test_other_commands() -> None:
    assert CRUN.kill("c1", 15) == [*BASE, "kill", "c1", "15"]
    assert CRUN.kill("c1", 9, all_processes=True) == [*BASE, "kill", "--all", "c1", "9"]
    assert CRUN.delete("c1") == [*BASE, "delete", "c1"]
    assert CRUN.delete("c1", force=True) == [*BASE, "delete", "--force", "c1"]
    assert CRUN.pause("c1") == [*BASE, "pause", "c1"]
    assert CRUN.resume("c1") == [*BASE, "resume", "c1"]
    assert CRUN.update("c1", "/r.json") == [*BASE, "update", "--resources", "/r.json", "c1"]
    assert CRUN.state("c1") == [*BASE, "state", "c1"]
    assert CRUN.ps("c1") == [*BASE, "ps", "--format", "json", "c1"]


def test_parse_state_of_both_runtimes() -> None:
    runc = parse_state(
        '{"ociVersion":"1.0.2-dev","id":"c1","pid":6595,"status":"running","bundle":"/b",'
        '"rootfs":"/b/rootfs","created":"2026-12-04T19:59:08.383440125Z","owner":""}'
    )
    assert (runc.id, runc.status, runc.pid, runc.bundle, runc.rootfs) == (
        "c1",
        "running",
        6595,
        "/b",
        "/b/rootfs",
    )
    crun = parse_state(
        b'{\n "ociVersion": "1.0.0", "id": "c1", "pid": 0, "status": "stopped", "bundle": "/b",'
        b' "rootfs": "rootfs", "created": "x", "systemd-scope": "", "owner": "root",'
        b' "annotations": {"a": "b"}}\n'
    )
    assert (crun.status, crun.pid, crun.annotations) == ("stopped", 0, {"a": "b"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"id": "c", "status": "running", "bundle": "/b"}', "'pid'"),
        ('{"id": "c", "status": "running", "pid": true, "bundle": "/b"}', "'pid'"),
        ('{"id": "c", "status": "exploded", "pid": 1, "bundle": "/b"}', "unknown status"),
        ('{"id": "c", "status": "running", "pid": 1, "bundle": "/b", "annotations": []}', "annotations"),
    ],
)
def test_parse_state_errors(text: str, match: str) -> None:
    with pytest.raises(Internal, match=match):
        parse_state(text)


def test_parse_ps() -> None:
    assert parse_ps("[1, 23]\n") == [1, 23]
    assert parse_ps("[]") == []
    for bad in ("", "{}", '["1"]', "[true]"):
        with pytest.raises(Internal):
            parse_ps(bad)


def test_error_message() -> None:
    log = '{"level":"info","msg":"hi"}\n{"level":"error","msg":"container_linux.go: boom"}\nnot json\n'
    assert error_message(b"", log) == "container_linux.go: boom"
    assert error_message(b"first\nexecutable file `x` not found\n\n") == "executable file `x` not found"
    assert error_message("") == "the OCI runtime failed without a message"


def test_is_missing_container() -> None:
    cli = RuntimeCLI(root="/run/oci")
    assert is_missing_container(
        cli, "c1", "error opening file `/run/oci/c1/status`: No such file or directory"
    )
    assert is_missing_container(cli, "c1", 'time="x" level=error msg="container does not exist"')
    assert not is_missing_container(
        cli, "c1", "executable file `/bin/x` not found in $PATH: No such file or directory"
    )
    assert not is_missing_container(
        cli, "c1", "error opening file `/run/oci/c10/status`: No such file or directory"
    )
    assert is_missing_container(cli, "c1", "cannot open directory '/run/oci/c1': No such file or directory")


def test_write_json_is_private_and_atomic(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"ociVersion": "1.0.2", "process": {"env": ["SECRET=1"]}})
    assert path == tmp_path / "config.json"
    assert json.loads(path.read_text())["process"]["env"] == ["SECRET=1"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    write_json(path, {"ociVersion": "1.1.0"})
    assert json.loads(path.read_text()) == {"ociVersion": "1.1.0"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temp file left
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ociVersion": "1.1.0"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
