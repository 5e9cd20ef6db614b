"""Identifier and OCI spec validation: each rule refuses with a message naming the field."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from agent import validation
from agent.errors import InvalidArgument
from agent.validation import validate_id, validate_spec

from .rootfs import build_rootfs


def base_spec() -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "hostname": "pod",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        },
    }


def with_(spec: dict, path: str, value: Any) -> dict:
    out = copy.deepcopy(spec)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def refused(spec: dict, match: str, **kw) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validate_spec(spec, **kw)


@pytest.mark.parametrize("good", ["ab", "a1", "0abc", "c-1.2_3", "A" * validation.MAX_ID_LENGTH, "x" * 64])
def test_ids_accepted(good: str) -> None:
    assert validate_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a",
        "-ab",
        ".ab",
        "_ab",
        "a/b",
        "..",
        "a b",
        "a\0b",
        "é1",
        "ab\n",
        "A" * (validation.MAX_ID_LENGTH + 1),
    ],
)
def test_ids_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="exec_id"):
        validate_id(bad, "exec_id")


def test_base_spec_is_valid() -> None:
    validate_spec(base_spec())


def test_hostname_needs_a_uts_namespace() -> None:
    spec = base_spec()
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "uts"]
    refused(spec, "hostname .* no uts namespace")
    spec.pop("hostname")
    validate_spec(spec)
    # Joining the sandbox's UTS namespace (a path) still counts as having one.
    spec = base_spec()
    spec["linux"]["namespaces"][2] = {"type": "uts", "path": "/proc/1/ns/uts"}
    validate_spec(spec)


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        ("net.ipv4.ip_forward", "network"),
        ("net.core.somaxconn", "network"),
        ("kernel.shmmax", "ipc"),
        ("kernel.msgmax", "ipc"),
        ("kernel.sem", "ipc"),
        ("kernel.shm_rmid_forced", "ipc"),
        ("fs.mqueue.msg_max", "ipc"),
        ("kernel.domainname", "uts"),
        ("kernel.hostname", "uts"),
    ],
)
def test_sysctls_follow_their_namespace(key: str, namespace: str) -> None:
    spec = with_(base_spec(), "linux.sysctl", {key: "1"})
    validate_spec(spec)
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != namespace]
    spec.pop("hostname")
    refused(spec, rf"linux\.sysctl\['{key}'\] needs a {namespace} namespace")


@pytest.mark.parametrize("key", ["vm.swappiness", "kernel.pid_max", "fs.file-max", "kernel.shm_next_id_x"])
def test_global_sysctls_are_refused(key: str) -> None:
    refused(with_(base_spec(), "linux.sysctl", {key: "1"}), rf"linux\.sysctl\['{key}'\] is not namespaced")


def test_namespace_entries() -> None:
    spec = base_spec()
    spec["linux"]["namespaces"].append({"type": "pid"})
    refused(spec, r"linux\.namespaces\[5\]: namespace 'pid' is listed twice")
    refused(with_(base_spec(), "linux.namespaces", [{"type": "bogus"}]), r"linux\.namespaces\[0\]\.type")
    refused(
        with_(base_spec(), "linux.uidMappings", [{"containerID": 0, "hostID": 1, "size": 1}]),
        "user namespace",
    )


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("process.args", [], r"process\.args is empty"),
        ("process.args", ["x"] * (validation.MAX_ARGS + 1), r"process\.args has 4097"),
        ("process.args", ["a" * (validation.MAX_ARG_STRING + 1)], r"process\.args\[0\] is longer"),
        ("process.args", ["a\0b"], r"process\.args\[0\] contains a NUL"),
        ("process.env", ["X=1"] * (validation.MAX_ENV + 1), r"process\.env has 4097"),
        ("process.env", ["NOEQUALS"], r"process\.env\[0\] .* KEY=value"),
        ("process.env", ["=1"], r"process\.env\[0\]"),
        ("process.env", [f"K{i}={'v' * 100_000}" for i in range(30)], r"total \d+ bytes"),
        ("process.cwd", "relative", r"process\.cwd .* absolute"),
        ("root", {}, r"root\.path is missing"),
        ("annotations", {f"k{i}": "v" for i in range(validation.MAX_ANNOTATIONS + 1)}, "annotations has"),
        ("annotations", {"big": "v" * (validation.MAX_ANNOTATIONS_BYTES + 1)}, "annotations total"),
        ("linux.rootfsPropagation", "sideways", r"linux\.rootfsPropagation"),
        ("linux.maskedPaths", ["proc/kcore"], r"linux\.maskedPaths\[0\]"),
        ("mounts", [{"destination": "relative"}], r"mounts\[0\]\.destination .* absolute"),
        ("mounts", [{"destination": "/a/../b"}], r"mounts\[0\]\.destination .* '\.\.'"),
        ("mounts", [{"destination": "/x"}] * (validation.MAX_MOUNTS + 1), "mounts has"),
    ],
)
def test_bounds_and_shapes(path: str, value: Any, match: str) -> None:
    refused(with_(base_spec(), path, value), match)


def test_missing_process() -> None:
    spec = base_spec()
    spec.pop("process")
    refused(spec, "process is missing")


def test_mount_destinations_stay_in_the_rootfs(tmp_path: Path) -> None:
    rootfs = build_rootfs(tmp_path / "rootfs")
    (tmp_path / "outside").mkdir()
    os.symlink("/run", rootfs / "var-run")  # absolute: taken from the rootfs, like the runtime does
    os.symlink("../../../outside", rootfs / "etc" / "escape")  # clamped at the rootfs
    os.symlink("loop", rootfs / "loop")
    spec = base_spec()
    spec["mounts"] = [
        {"destination": "/proc"},
        {"destination": "/var-run/secrets/token"},  # missing below a link: fine, created later
        {"destination": "/etc/escape/x"},
        {"destination": "/etc/resolv.conf"},
    ]
    validate_spec(spec, rootfs=str(rootfs))
    spec["mounts"].append({"destination": "/loop/x"})
    refused(spec, r"mounts\[4\]\.destination .* symbolic links", rootfs=str(rootfs))
    spec["mounts"][4] = {"destination": "/bin/busybox/x"}
    refused(spec, r"mounts\[4\]\.destination .* not a directory", rootfs=str(rootfs))
