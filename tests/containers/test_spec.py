"""The protobuf <-> OCI JSON spec converter: complete, faithful, and strict on input."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import InvalidArgument
from agent.protocols import oci_pb2
from agent.runtime.spec import (
    SCHEMA,
    Rule,
    process_from_json,
    process_to_json,
    resources_from_json,
    resources_to_json,
    spec_from_json,
    spec_to_json,
    to_json,
)

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "contract" / "kata-agent-api.json"

# A document using every key the contract can carry, each with a non-default value.
FULL: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": True,
        "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [5, 10], "username": "app"},
        "args": ["/bin/sh", "-c", "echo hi"],
        "env": ["PATH=/bin", "HOME=/root"],
        "cwd": "/work",
        "capabilities": {
            "bounding": ["CAP_KILL"],
            "effective": ["CAP_KILL"],
            "inheritable": ["CAP_CHOWN"],
            "permitted": ["CAP_KILL"],
            "ambient": ["CAP_NET_RAW"],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 2**64 - 1, "soft": 1024}],
        "noNewPrivileges": True,
        "apparmorProfile": "kata-default",
        "oomScoreAdj": -500,
        "selinuxLabel": "system_u:system_r:container_t:s0",
    },
    "root": {"path": "/run/kata-containers/c1/rootfs", "readonly": True},
    "hostname": "pod-a",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "bind", "source": "/run/shared/data", "options": ["rbind", "ro"]},
    ],
    "hooks": {
        "prestart": [{"path": "/bin/pre", "args": ["pre", "1"], "env": ["A=1"], "timeout": 5}],
        "createRuntime": [{"path": "/bin/cr"}],
        "createContainer": [{"path": "/bin/cc"}],
        "startContainer": [{"path": "/bin/sc"}],
        "poststart": [{"path": "/bin/post"}],
        "poststop": [{"path": "/bin/stop", "timeout": 1}],
    },
    "annotations": {"io.kubernetes.cri.container-type": "container", "empty": ""},
    "linux": {
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rw"},
                {"allow": True, "type": "c", "minor": 7, "access": "r"},
            ],
            "memory": {
                "limit": 536870912,
                "reservation": 268435456,
                "swap": 1073741824,
                "kernel": -1,
                "kernelTCP": 1048576,
                "swappiness": 60,
                "disableOOMKiller": True,
            },
            "cpu": {
                "shares": 1024,
                "quota": 50000,
                "period": 100000,
                "realtimeRuntime": 950000,
                "realtimePeriod": 1000000,
                "cpus": "0-1",
                "mems": "0",
            },
            "pids": {"limit": 128},
            "blockIO": {
                "weight": 500,
                "leafWeight": 300,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 600, "leafWeight": 200}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 16, "rate": 2097152}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 0}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 0}]},
        },
        "cgroupsPath": "/kata/pod-a/c1",
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}],
        "devices": [
            {
                "path": "/dev/fuse",
                "type": "c",
                "major": 10,
                "minor": 229,
                "fileMode": 438,
                "uid": 1,
                "gid": 2,
            },
            {"path": "/dev/null0", "type": "c", "major": 1, "minor": 3},
            {"path": "/dev/pipe", "type": "p"},
        ],
        "seccomp": {
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 0, "valueTwo": 1, "op": "SCMP_CMP_EQ"}],
                },
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0},
            ],
        },
        "rootfsPropagation": "rslave",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "mountLabel": "system_u:object_r:container_file_t:s0",
        "intelRdt": {"l3CacheSchema": "L3:0=ffff"},
    },
}


def _reachable(desc, seen=None) -> dict:
    """Every message descriptor reachable from ``desc`` (map entries excluded)."""
    seen = {} if seen is None else seen
    if desc.full_name in seen or desc.GetOptions().map_entry:
        return seen
    seen[desc.full_name] = desc
    for fd in desc.fields:
        if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            _reachable(fd.message_type, seen)
    return seen


def _generated(binary: str, rootless: bool, tmp_path: Path) -> dict[str, Any]:
    if shutil.which(binary) is None:
        raise RuntimeError(f"{binary} is not installed (Debian package {binary})")
    d = tmp_path / f"{binary}-{rootless}"
    d.mkdir()
    subprocess.run([binary, "spec", *(["--rootless"] if rootless else [])], cwd=d, check=True)
    return json.loads((d / "config.json").read_text())


def _drop_empty_lists(doc: Any, path: str = "", dropped: list[str] | None = None) -> Any:
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if isinstance(v, list) and not v:
                if dropped is not None:
                    dropped.append(f"{path}.{k}".lstrip("."))
                continue
            out[k] = _drop_empty_lists(v, f"{path}.{k}", dropped)
        return out
    if isinstance(doc, list):
        return [_drop_empty_lists(v, f"{path}[]", dropped) for v in doc]
    return doc


def test_schema_covers_every_field_of_the_contract() -> None:
    """The table names exactly the fields of every message reachable from grpc.Spec."""
    reachable = _reachable(oci_pb2.Spec.DESCRIPTOR)
    # Solaris and Windows are placeholders (string dummy = 1) with no OCI counterpart.
    unsupported = {"grpc.Solaris", "grpc.Windows"}
    assert {(f.key, f.rule) for f in SCHEMA["grpc.Spec"] if f.rule is Rule.UNSUPPORTED} == {
        ("solaris", Rule.UNSUPPORTED),
        ("windows", Rule.UNSUPPORTED),
    }
    assert set(reachable) - unsupported == set(SCHEMA)
    for name in unsupported:
        reachable.pop(name)
    contract = json.loads(CONTRACT.read_text())["messages"]
    for name, desc in reachable.items():
        table = {f.name for f in SCHEMA[name]}
        assert table == {fd.name for fd in desc.fields}, name
        assert table == {f["name"] for f in contract[name]["fields"]}, name
        keys = [f.key for f in SCHEMA[name]]
        assert len(keys) == len(set(keys)), name


def test_full_document_uses_every_key() -> None:
    used: set[tuple[str, str]] = set()

    def walk(doc: Any, msg_name: str) -> None:
        fields = {f.key: f for f in SCHEMA[msg_name]}
        desc = _reachable(oci_pb2.Spec.DESCRIPTOR)[msg_name]
        for key, value in doc.items():
            used.add((msg_name, key))
            fd = desc.fields_by_name[fields[key].name]
            if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
                for item in value if isinstance(value, list) else [value]:
                    walk(item, fd.message_type.full_name)

    walk(FULL, "grpc.Spec")
    expected = {(m, f.key) for m, fs in SCHEMA.items() for f in fs if f.rule is not Rule.UNSUPPORTED}
    assert expected - used == set()


def test_full_document_round_trips_exactly() -> None:
    pb = spec_from_json(FULL)
    assert spec_to_json(pb) == FULL
    assert spec_from_json(spec_to_json(pb)) == pb
    wire = oci_pb2.Spec.FromString(pb.SerializeToString())
    assert spec_to_json(wire) == FULL
    json.dumps(spec_to_json(pb))  # plain JSON types only


@pytest.mark.parametrize("binary", ["crun", "runc"])
@pytest.mark.parametrize("rootless", [False, True], ids=["default", "rootless"])
def test_runtime_generated_specs_round_trip(binary: str, rootless: bool, tmp_path: Path) -> None:
    original = _generated(binary, rootless, tmp_path)
    pb = spec_from_json(original)
    dropped: list[str] = []
    expected = _drop_empty_lists(original, dropped=dropped)
    assert spec_to_json(pb) == expected
    # The only loss: an empty list that the runtime-spec treats as absent.
    assert dropped in ([], ["process.capabilities.inheritable"])
    if binary == "runc":
        assert spec_to_json(pb) == original


def test_required_fields_are_written_even_when_zero() -> None:
    spec = oci_pb2.Spec(
        Process=oci_pb2.Process(Cwd="/", Rlimits=[oci_pb2.POSIXRlimit(Type="RLIMIT_CORE")]),
        Root=oci_pb2.Root(Path="rootfs"),
        Mounts=[oci_pb2.Mount(destination="/x")],
        Linux=oci_pb2.Linux(
            UIDMappings=[oci_pb2.LinuxIDMapping()],
            Namespaces=[oci_pb2.LinuxNamespace(Type="pid")],
            Resources=oci_pb2.LinuxResources(Devices=[oci_pb2.LinuxDeviceCgroup(Access="rwm")]),
        ),
    )
    out = spec_to_json(spec)
    assert out["process"] == {
        "user": {"uid": 0, "gid": 0},
        "cwd": "/",
        "rlimits": [{"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
    }
    assert out["root"] == {"path": "rootfs"}
    assert out["mounts"] == [{"destination": "/x"}]
    assert out["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 0, "size": 0}]
    assert out["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_default_valued_objects_are_omitted() -> None:
    spec = oci_pb2.Spec(
        Process=oci_pb2.Process(ConsoleSize=oci_pb2.Box()),
        Hooks=oci_pb2.Hooks(),
        Linux=oci_pb2.Linux(
            Resources=oci_pb2.LinuxResources(
                Memory=oci_pb2.LinuxMemory(),
                CPU=oci_pb2.LinuxCPU(),
                Pids=oci_pb2.LinuxPids(Limit=0),
                BlockIO=oci_pb2.LinuxBlockIO(),
                Network=oci_pb2.LinuxNetwork(),
            ),
            Seccomp=oci_pb2.LinuxSeccomp(),
            IntelRdt=oci_pb2.LinuxIntelRdt(),
        ),
    )
    assert spec_to_json(spec) == {"process": {"user": {"uid": 0, "gid": 0}, "cwd": ""}, "linux": {}}


def test_presence_objects_keep_their_meaning() -> None:
    """capabilities {} drops every capability; an absent object keeps the runtime's."""
    with_empty = oci_pb2.Process(Capabilities=oci_pb2.LinuxCapabilities())
    assert process_to_json(with_empty)["capabilities"] == {}
    assert "capabilities" not in process_to_json(oci_pb2.Process())
    assert process_from_json({"cwd": "/", "capabilities": {}}).HasField("Capabilities")
    assert spec_to_json(oci_pb2.Spec()) == {}


def test_optional_scalars_at_zero_are_unset() -> None:
    mem = oci_pb2.LinuxResources(Memory=oci_pb2.LinuxMemory(Limit=1 << 20, Swappiness=0, Kernel=-1))
    assert resources_to_json(mem) == {"memory": {"limit": 1 << 20, "kernel": -1}}
    proc = oci_pb2.Process(OOMScoreAdj=0, Terminal=False, NoNewPrivileges=False, Cwd="/")
    assert process_to_json(proc) == {"user": {"uid": 0, "gid": 0}, "cwd": "/"}


@pytest.mark.parametrize(
    ("major", "minor", "expected"),
    [
        (0, 0, {}),  # Go runtime: nil pointers arrive as zeros = any device
        (-1, -1, {}),  # Kata's explicit "any"
        (5, 0, {"major": 5, "minor": 0}),  # /dev/tty
        (-1, 7, {"minor": 7}),
        (0, 7, {"minor": 7}),
        (10, -1, {"major": 10}),
        (1, 3, {"major": 1, "minor": 3}),
    ],
)
def test_device_cgroup_wildcards(major: int, minor: int, expected: dict) -> None:
    rule = oci_pb2.LinuxDeviceCgroup(Allow=True, Type="c", Major=major, Minor=minor, Access="rwm")
    out = to_json(rule)
    assert {k: v for k, v in out.items() if k in ("major", "minor")} == expected
    back = resources_from_json({"devices": [out]}).Devices[0]
    assert (back.Major, back.Minor) == (
        expected.get("major", -1),
        expected.get("minor", -1),
    )


def test_linux_device_numbers() -> None:
    fifo = oci_pb2.LinuxDevice(Path="/dev/p", Type="p")
    assert to_json(fifo) == {"path": "/dev/p", "type": "p"}
    null = oci_pb2.LinuxDevice(Path="/dev/x", Type="c", Major=1, Minor=0)
    assert to_json(null) == {"path": "/dev/x", "type": "c", "major": 1, "minor": 0}


def test_errno_ret_has_presence() -> None:
    unset = oci_pb2.LinuxSyscall(Names=["a"], Action="SCMP_ACT_ERRNO")
    zero = oci_pb2.LinuxSyscall(Names=["a"], Action="SCMP_ACT_ERRNO", errnoret=0)
    assert "errnoRet" not in to_json(unset)
    assert to_json(zero)["errnoRet"] == 0


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"linux": {"resources": {"unified": {"memory.max": "1"}}}}, "linux.resources.unified"),
        ({"process": {"scheduler": {"policy": "SCHED_OTHER"}}}, "process.scheduler"),
        ({"windows": {"layerFolders": []}}, "windows"),
        ({"solaris": {}}, "solaris"),
        ({"process": {"user": {"uid": "0"}}}, "process.user.uid"),
        ({"process": {"user": {"uid": -1}}}, "process.user.uid"),
        ({"process": {"user": {"uid": 2**32}}}, "process.user.uid"),
        ({"process": {"terminal": 1}}, "process.terminal"),
        ({"process": {"oomScoreAdj": True}}, "process.oomScoreAdj"),
        ({"process": {"args": "sh"}}, "process.args"),
        ({"process": {"args": ["sh", 1]}}, "process.args[1]"),
        ({"mounts": [{"destination": "/a"}, {"destination": 5}]}, "mounts[1].destination"),
        ({"annotations": {"a": 1}}, "annotations"),
        ({"linux": {"resources": {"cpu": {"quota": 2**63}}}}, "linux.resources.cpu.quota"),
        ({"linux": []}, "linux"),
        ({"hooks": {"prestart": [{"path": "/x", "timeout": 1.5}]}}, "hooks.prestart[0].timeout"),
    ],
)
def test_strict_input_names_the_field(doc: dict, path: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        spec_from_json(doc)
    assert path in err.value.message


def test_lenient_input_drops_what_the_contract_cannot_carry() -> None:
    doc = copy.deepcopy(FULL)
    doc["linux"]["resources"]["unified"] = {"memory.high": "1G"}
    doc["process"]["user"]["umask"] = 18
    doc["windows"] = {"layerFolders": ["C:\\"]}
    assert spec_to_json(spec_from_json(doc, strict=False)) == FULL


def test_null_means_absent() -> None:
    assert spec_to_json(spec_from_json({"hostname": None, "linux": {"resources": None}})) == {"linux": {}}


# A property over random protobuf Specs: one conversion reaches a fixpoint, i.e. converting
# what we wrote gives the same document again (no rule depends on how the input was built).

_SCALARS = {
    FieldDescriptor.CPPTYPE_STRING: st.sampled_from(["", "a", "p", "/x", "c"]),
    FieldDescriptor.CPPTYPE_BOOL: st.booleans(),
    FieldDescriptor.CPPTYPE_INT32: st.integers(-3, 3),
    FieldDescriptor.CPPTYPE_INT64: st.sampled_from([-(2**63), -1, 0, 1, 7, 2**63 - 1]),
    FieldDescriptor.CPPTYPE_UINT32: st.sampled_from([0, 1, 2**32 - 1]),
    FieldDescriptor.CPPTYPE_UINT64: st.sampled_from([0, 1, 2**64 - 1]),
}


def _message(desc, depth: int):
    @st.composite
    def build(draw):
        msg = getattr(oci_pb2, desc.name)()
        for fd in desc.fields:
            if not draw(st.booleans()):
                continue
            is_msg = fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
            if is_msg and fd.message_type.GetOptions().map_entry:
                getattr(msg, fd.name).update(
                    draw(st.dictionaries(st.sampled_from(["a", "b"]), st.text(max_size=2)))
                )
            elif is_msg and depth <= 0:
                continue
            elif fd.is_repeated and is_msg:
                for item in draw(st.lists(_message(fd.message_type, depth - 1), max_size=2)):
                    getattr(msg, fd.name).add().CopyFrom(item)
            elif fd.is_repeated:
                getattr(msg, fd.name).extend(draw(st.lists(_SCALARS[fd.cpp_type], max_size=2)))
            elif is_msg:
                getattr(msg, fd.name).CopyFrom(draw(_message(fd.message_type, depth - 1)))
                getattr(msg, fd.name).SetInParent()
            else:
                setattr(msg, fd.name, draw(_SCALARS[fd.cpp_type]))
        return msg

    return build()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_message(oci_pb2.Spec.DESCRIPTOR, depth=5))
def test_conversion_reaches_a_fixpoint(spec: oci_pb2.Spec) -> None:
    once = spec_to_json(spec)
    assert spec_to_json(spec_from_json(once)) == once
    assert json.loads(json.dumps(once)) == once
