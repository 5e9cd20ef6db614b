"""Convert the protobuf ``grpc.Spec`` to the OCI runtime-spec JSON (``config.json``) and back.

This is the one module below the service layer that touches protobuf: its job is exactly
that conversion. Everything above it (validation, the runtime CLI, cgroups) works on the
plain JSON dict this module produces.

Why a table and not ``json_format``: the contract's field names are CamelCase Go names
(``OOMScoreAdj``, ``UIDMappings``...) that do not map mechanically to OCI keys
(``oomScoreAdj``, ``uidMappings``, ``pageSize``, ``classID``...), and proto3 cannot say
"unset" for a scalar, which the OCI JSON can. The table below names every field of every
message reachable from ``grpc.Spec`` (a test walks the descriptors to keep it complete),
and gives each one an emission rule.

The rules (protobuf -> JSON):

* REQUIRED fields (the runtime-spec marks them REQUIRED, e.g. ``user.uid``, ``cwd``,
  ``root.path``, ``mounts[].destination``, ``rlimits[].hard``, ``allow`` of a device rule)
  are always written when their parent is, zero or not: ``"uid": 0`` means root.
* OPTIONAL scalars are omitted when they hold the protobuf default (``0``, ``""``,
  ``false``). proto3 cannot tell "unset" from zero, and for a runtime a zero is usually
  harmful rather than neutral (crun writes ``memory.limit_in_bytes=0`` if it sees
  ``"limit": 0``). The price: values whose zero is meaningful cannot be requested —
  ``memory.swappiness = 0`` and ``process.oomScoreAdj = 0`` both read as "leave the
  inherited value". Whoever spawns the runtime should therefore not run it with an
  oom_score_adj it would not want containers to inherit.
* Repeated fields and maps are omitted when empty. The runtime-spec gives an absent list
  and an empty list the same meaning everywhere in this tree (``crun spec`` writes
  ``"inheritable": []`` where ``runc spec`` writes nothing; both mean "no capability").
* OPTIONAL messages are omitted when unset, when every field in them is default, or when
  nothing in them survives these rules: ``"memory": {}``, ``"resources": {}`` or
  ``"pids": {"limit": 0}`` is junk some runtimes choke on.
* PRESENCE messages are written whenever set, even if empty, because emptiness means
  something: ``process.capabilities: {}`` drops every capability while an absent object
  keeps the runtime's defaults, and ``linux: {}`` selects the Linux platform.
* Device-cgroup ``major``/``minor`` use -1 for "any" (Kata's convention); the Go runtime
  sends 0 for an unset pointer, so ``major <= 0`` is also "any" (major 0 is never a device
  node), and ``minor == 0`` is "any" only when ``major`` is too (``c 5:0`` is /dev/tty).
  JSON -> protobuf writes -1 for an absent major/minor.
* ``linux.devices[].major/minor`` are REQUIRED except for fifos (type ``p``), where a zero
  is omitted.
* ``LinuxSyscall.errnoRet`` is a proto oneof, so it has presence: written when set.
* ``solaris`` and ``windows`` exist in the contract only as placeholder messages
  (``string dummy = 1``) with no OCI counterpart; they are never written, and a JSON
  document carrying them is refused in strict mode (dropped otherwise), like any other
  key the contract cannot carry (``linux.resources.unified``, ``process.scheduler``...).

JSON -> protobuf is strict by default: unknown keys, wrong types and out-of-range
numbers raise ``InvalidArgument`` naming the offending path (``linux.resources.cpu.quota``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agent.errors import InvalidArgument
from agent.protocols import oci_pb2


class Rule(enum.Enum):
    """How a field is written to JSON (see the module docstring)."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    PRESENCE = "presence"
    ONEOF = "oneof"
    ANY_MAJOR = "any-major"
    ANY_MINOR = "any-minor"
    DEVICE_NUMBER = "device-number"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Field:
    """One OCI JSON key and the protobuf field it comes from."""

    key: str
    name: str
    rule: Rule = Rule.OPTIONAL


R, P = Rule.REQUIRED, Rule.PRESENCE

# Every message reachable from grpc.Spec, fields in the order the runtime-spec lists them.
SCHEMA: dict[str, tuple[Field, ...]] = {
    "grpc.Spec": (
        Field("ociVersion", "Version"),
        Field("process", "Process"),
        Field("root", "Root"),
        Field("hostname", "Hostname"),
        Field("mounts", "Mounts"),
        Field("hooks", "Hooks"),
        Field("annotations", "Annotations"),
        Field("linux", "Linux", P),
        Field("solaris", "Solaris", Rule.UNSUPPORTED),
        Field("windows", "Windows", Rule.UNSUPPORTED),
    ),
    "grpc.Process": (
        Field("terminal", "Terminal"),
        Field("consoleSize", "ConsoleSize"),
        Field("user", "User", R),
        Field("args", "Args"),
        Field("env", "Env"),
        Field("cwd", "Cwd", R),
        Field("capabilities", "Capabilities", P),
        Field("rlimits", "Rlimits"),
        Field("noNewPrivileges", "NoNewPrivileges"),
        Field("apparmorProfile", "ApparmorProfile"),
        Field("oomScoreAdj", "OOMScoreAdj"),
        Field("selinuxLabel", "SelinuxLabel"),
    ),
    "grpc.Box": (Field("height", "Height", R), Field("width", "Width", R)),
    "grpc.User": (
        Field("uid", "UID", R),
        Field("gid", "GID", R),
        Field("additionalGids", "AdditionalGids"),
        Field("username", "Username"),
    ),
    "grpc.LinuxCapabilities": (
        Field("bounding", "Bounding"),
        Field("effective", "Effective"),
        Field("inheritable", "Inheritable"),
        Field("permitted", "Permitted"),
        Field("ambient", "Ambient"),
    ),
    "grpc.POSIXRlimit": (Field("type", "Type", R), Field("hard", "Hard", R), Field("soft", "Soft", R)),
    "grpc.Root": (Field("path", "Path", R), Field("readonly", "Readonly")),
    "grpc.Mount": (
        Field("destination", "destination", R),
        Field("type", "type"),
        Field("source", "source"),
        Field("options", "options"),
    ),
    "grpc.Hooks": (
        Field("prestart", "Prestart"),
        Field("createRuntime", "CreateRuntime"),
        Field("createContainer", "CreateContainer"),
        Field("startContainer", "StartContainer"),
        Field("poststart", "Poststart"),
        Field("poststop", "Poststop"),
    ),
    "grpc.Hook": (
        Field("path", "Path", R),
        Field("args", "Args"),
        Field("env", "Env"),
        Field("timeout", "Timeout"),
    ),
    "grpc.Linux": (
        Field("uidMappings", "UIDMappings"),
        Field("gidMappings", "GIDMappings"),
        Field("sysctl", "Sysctl"),
        Field("resources", "Resources"),
        Field("cgroupsPath", "CgroupsPath"),
        Field("namespaces", "Namespaces"),
        Field("devices", "Devices"),
        Field("seccomp", "Seccomp"),
        Field("rootfsPropagation", "RootfsPropagation"),
        Field("maskedPaths", "MaskedPaths"),
        Field("readonlyPaths", "ReadonlyPaths"),
        Field("mountLabel", "MountLabel"),
        Field("intelRdt", "IntelRdt"),
    ),
    "grpc.LinuxIDMapping": (
        Field("containerID", "ContainerID", R),
        Field("hostID", "HostID", R),
        Field("size", "Size", R),
    ),
    "grpc.LinuxNamespace": (Field("type", "Type", R), Field("path", "Path")),
    "grpc.LinuxDevice": (
        Field("path", "Path", R),
        Field("type", "Type", R),
        Field("major", "Major", Rule.DEVICE_NUMBER),
        Field("minor", "Minor", Rule.DEVICE_NUMBER),
        Field("fileMode", "FileMode"),
        Field("uid", "UID"),
        Field("gid", "GID"),
    ),
    "grpc.LinuxResources": (
        Field("devices", "Devices"),
        Field("memory", "Memory"),
        Field("cpu", "CPU"),
        Field("pids", "Pids"),
        Field("blockIO", "BlockIO"),
        Field("hugepageLimits", "HugepageLimits"),
        Field("network", "Network"),
    ),
    "grpc.LinuxDeviceCgroup": (
        Field("allow", "Allow", R),
        Field("type", "Type"),
        Field("major", "Major", Rule.ANY_MAJOR),
        Field("minor", "Minor", Rule.ANY_MINOR),
        Field("access", "Access"),
    ),
    "grpc.LinuxMemory": (
        Field("limit", "Limit"),
        Field("reservation", "Reservation"),
        Field("swap", "Swap"),
        Field("kernel", "Kernel"),
        Field("kernelTCP", "KernelTCP"),
        Field("swappiness", "Swappiness"),
        Field("disableOOMKiller", "DisableOOMKiller"),
    ),
    "grpc.LinuxCPU": (
        Field("shares", "Shares"),
        Field("quota", "Quota"),
        Field("period", "Period"),
        Field("realtimeRuntime", "RealtimeRuntime"),
        Field("realtimePeriod", "RealtimePeriod"),
        Field("cpus", "Cpus"),
        Field("mems", "Mems"),
    ),
    "grpc.LinuxPids": (Field("limit", "Limit", R),),
    "grpc.LinuxBlockIO": (
        Field("weight", "Weight"),
        Field("leafWeight", "LeafWeight"),
        Field("weightDevice", "WeightDevice"),
        Field("throttleReadBpsDevice", "ThrottleReadBpsDevice"),
        Field("throttleWriteBpsDevice", "ThrottleWriteBpsDevice"),
        Field("throttleReadIOPSDevice", "ThrottleReadIOPSDevice"),
        Field("throttleWriteIOPSDevice", "ThrottleWriteIOPSDevice"),
    ),
    "grpc.LinuxWeightDevice": (
        Field("major", "Major", R),
        Field("minor", "Minor", R),
        Field("weight", "Weight"),
        Field("leafWeight", "LeafWeight"),
    ),
    "grpc.LinuxThrottleDevice": (
        Field("major", "Major", R),
        Field("minor", "Minor", R),
        Field("rate", "Rate", R),
    ),
    "grpc.LinuxHugepageLimit": (Field("pageSize", "Pagesize", R), Field("limit", "Limit", R)),
    "grpc.LinuxNetwork": (Field("classID", "ClassID"), Field("priorities", "Priorities")),
    "grpc.LinuxInterfacePriority": (Field("name", "Name", R), Field("priority", "Priority", R)),
    "grpc.LinuxSeccomp": (
        Field("defaultAction", "DefaultAction", R),
        Field("architectures", "Architectures"),
        Field("flags", "Flags"),
        Field("syscalls", "Syscalls"),
    ),
    "grpc.LinuxSyscall": (
        Field("names", "Names", R),
        Field("action", "Action", R),
        Field("errnoRet", "errnoret", Rule.ONEOF),
        Field("args", "Args"),
    ),
    "grpc.LinuxSeccompArg": (
        Field("index", "Index", R),
        Field("value", "Value", R),
        Field("valueTwo", "ValueTwo"),
        Field("op", "Op", R),
    ),
    "grpc.LinuxIntelRdt": (Field("l3CacheSchema", "L3CacheSchema"),),
}

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


# ---------------------------------------------------------------- protobuf -> JSON


def to_json(msg: Message) -> dict[str, Any]:
    """Convert any message of the Spec tree to its OCI JSON object."""
    desc = msg.DESCRIPTOR
    out: dict[str, Any] = {}
    for f in SCHEMA[desc.full_name]:
        if f.rule is Rule.UNSUPPORTED:
            continue
        fd = desc.fields_by_name[f.name]
        value = getattr(msg, f.name)
        if _is_map(fd):
            if value:
                out[f.key] = dict(value)
        elif fd.is_repeated:
            if value:
                is_msg = fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
                out[f.key] = [to_json(v) for v in value] if is_msg else list(value)
        elif fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if _emit_message(f.rule, msg.HasField(f.name), value):
                converted = to_json(value)
                if converted or f.rule is not Rule.OPTIONAL:
                    out[f.key] = converted
        elif _emit_scalar(f, msg, value):
            out[f.key] = value
    return out


def _emit_message(rule: Rule, present: bool, value: Message) -> bool:
    if rule is Rule.REQUIRED:
        return True
    if rule is Rule.PRESENCE:
        return present
    return present and value.ByteSize() > 0


def _emit_scalar(f: Field, msg: Message, value: Any) -> bool:
    rule = f.rule
    if rule is Rule.REQUIRED:
        return True
    if rule is Rule.ONEOF:
        return msg.HasField(f.name)
    if rule is Rule.ANY_MAJOR:
        return value > 0
    if rule is Rule.ANY_MINOR:
        return value > 0 or (value == 0 and msg.Major > 0)
    if rule is Rule.DEVICE_NUMBER:
        return not (msg.Type == "p" and value == 0)
    return bool(value)


def _is_map(fd: FieldDescriptor) -> bool:
    return (
        fd.is_repeated
        and fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
        and fd.message_type.GetOptions().map_entry
    )


def spec_to_json(spec: oci_pb2.Spec) -> dict[str, Any]:
    """The ``config.json`` document for a ``grpc.Spec``."""
    return to_json(spec)


def process_to_json(process: oci_pb2.Process) -> dict[str, Any]:
    """The ``process.json`` document for ``<runtime> exec --process``."""
    return to_json(process)


def resources_to_json(resources: oci_pb2.LinuxResources) -> dict[str, Any]:
    """The resources document for ``<runtime> update --resources``."""
    return to_json(resources)


# ---------------------------------------------------------------- JSON -> protobuf


def from_json(doc: Any, msg: Message, *, path: str = "", strict: bool = True) -> Message:
    """Fill ``msg`` (any message of the Spec tree) from its OCI JSON object; returns ``msg``."""
    where = path or msg.DESCRIPTOR.name
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"{where}: expected a JSON object, got {type(doc).__name__}")
    desc = msg.DESCRIPTOR
    fields = {f.key: f for f in SCHEMA[desc.full_name]}
    for key, value in doc.items():
        fpath = f"{path}.{key}" if path else str(key)
        f = fields.get(key)
        if f is None or f.rule is Rule.UNSUPPORTED:
            if strict:
                raise InvalidArgument(f"{fpath}: not representable in {desc.full_name}")
            continue
        if value is None:
            continue
        _set_field(msg, desc.fields_by_name[f.name], value, fpath, strict)
    for f in fields.values():
        if f.rule in (Rule.ANY_MAJOR, Rule.ANY_MINOR) and doc.get(f.key) is None:
            setattr(msg, f.name, -1)
    return msg


def _set_field(msg: Message, fd: FieldDescriptor, value: Any, path: str, strict: bool) -> None:
    if _is_map(fd):
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"{path}: expected a JSON object of strings")
        target = getattr(msg, fd.name)
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidArgument(f"{path}[{k!r}]: expected a string")
            target[k] = v
    elif fd.is_repeated:
        if not isinstance(value, list):
            raise InvalidArgument(f"{path}: expected a JSON array, got {type(value).__name__}")
        target = getattr(msg, fd.name)
        for i, item in enumerate(value):
            if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                from_json(item, target.add(), path=f"{path}[{i}]", strict=strict)
            else:
                target.append(_scalar(fd, item, f"{path}[{i}]"))
    elif fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        sub = getattr(msg, fd.name)
        sub.SetInParent()
        from_json(value, sub, path=path, strict=strict)
    else:
        setattr(msg, fd.name, _scalar(fd, value, path))


def _scalar(fd: FieldDescriptor, value: Any, path: str) -> Any:
    cpp = fd.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if not isinstance(value, str):
            raise InvalidArgument(f"{path}: expected a string, got {value!r}")
        return value
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        if not isinstance(value, bool):
            raise InvalidArgument(f"{path}: expected true or false, got {value!r}")
        return value
    lo, hi = _INT_RANGES[cpp]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{path}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidArgument(f"{path}: {value} is outside [{lo}, {hi}]")
    return value


def spec_from_json(doc: Mapping[str, Any], *, strict: bool = True) -> oci_pb2.Spec:
    """A ``grpc.Spec`` from a ``config.json`` document."""
    return from_json(doc, oci_pb2.Spec(), path="", strict=strict)


def process_from_json(doc: Mapping[str, Any], *, strict: bool = True) -> oci_pb2.Process:
    """A ``grpc.Process`` from an OCI ``process`` object."""
    return from_json(doc, oci_pb2.Process(), path="process", strict=strict)


def resources_from_json(doc: Mapping[str, Any], *, strict: bool = True) -> oci_pb2.LinuxResources:
    """A ``grpc.LinuxResources`` from an OCI ``linux.resources`` object."""
    return from_json(doc, oci_pb2.LinuxResources(), path="resources", strict=strict)
