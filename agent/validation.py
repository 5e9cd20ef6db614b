"""Checks on identifiers and OCI specs that the runtime would accept but we must not.

Why here and not in the OCI runtime: the runtime trusts its config.json; the agent gets
its input from a host that the guest should not blindly trust (a compromised shim, a
policy-less runtime). These checks keep ids usable as path components, keep settings
from leaking into the guest kernel outside the container's namespaces, bound what we
hold in memory, and keep mount destinations inside the container's rootfs.

Everything works on the OCI JSON dict (``agent.runtime.spec.spec_to_json`` output), so
no protobuf is needed here. Errors are ``InvalidArgument`` naming the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from agent.errors import InvalidArgument, PermissionDenied

MAX_ID_LENGTH = 256
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]+")

# Bounds on what a process description may carry. The kernel caps one argv/env string at
# MAX_ARG_STRLEN (32 pages) and the whole argv+envp at a quarter of the stack rlimit
# (2 MiB with the usual 8 MiB); beyond these execve fails anyway, after we buffered it all.
MAX_ARGS = 4096
MAX_ENV = 4096
MAX_ARG_STRING = 128 * 1024
MAX_ARGV_ENV_BYTES = 2 * 1024 * 1024
# Kubernetes caps all annotations of an object at 256 KiB; Kata adds its own on top.
MAX_ANNOTATIONS = 1024
MAX_ANNOTATIONS_BYTES = 512 * 1024
MAX_MOUNTS = 1024

NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
ROOTFS_PROPAGATIONS = frozenset(
    {"private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"}
)
# IPC-namespaced sysctls (besides the whole fs.mqueue.* family), as in the runtime-spec.
_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
_UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})


def validate_id(value: str, field: str = "container_id") -> str:
    """Check a container/exec/sandbox id: ``[A-Za-z0-9][A-Za-z0-9._-]+``, bounded length.

    Ids become path components (bundle dirs, runtime state dirs), so anything else
    (``/``, ``..``, NUL, an empty string) is refused. Returns the id for chaining.
    """
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{field} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field} is longer than {MAX_ID_LENGTH} characters")
    if not _ID_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} {value!r} is invalid: it must start with a letter or digit, "
            "be at least 2 characters, and contain only letters, digits, '.', '_' and '-'"
        )
    return value


def validate_process(process: Mapping[str, Any], *, field: str = "process") -> None:
    """Bound and sanity-check an OCI process object (container init or exec)."""
    args = process.get("args") or []
    env = process.get("env") or []
    if not args:
        raise InvalidArgument(f"{field}.args is empty")
    if len(args) > MAX_ARGS:
        raise InvalidArgument(f"{field}.args has {len(args)} entries, more than {MAX_ARGS}")
    if len(env) > MAX_ENV:
        raise InvalidArgument(f"{field}.env has {len(env)} entries, more than {MAX_ENV}")
    total = 0
    for name, values in (("args", args), ("env", env)):
        for i, item in enumerate(values):
            _check_string(item, f"{field}.{name}[{i}]", MAX_ARG_STRING)
            total += len(item.encode()) + 1
    if total > MAX_ARGV_ENV_BYTES:
        raise InvalidArgument(
            f"{field}.args and {field}.env total {total} bytes, more than {MAX_ARGV_ENV_BYTES}"
        )
    for i, item in enumerate(env):
        if "=" not in item or item.startswith("="):
            raise InvalidArgument(f"{field}.env[{i}] {item[:64]!r} is not of the form KEY=value")
    cwd = process.get("cwd", "")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise InvalidArgument(f"{field}.cwd {cwd!r} must be an absolute path")
    _check_string(cwd, f"{field}.cwd", 4096)


def validate_spec(spec: Mapping[str, Any], *, rootfs: str | None = None) -> None:
    """Check an OCI config for CreateContainer.

    ``rootfs`` (the host-side path of the container's root) enables the mount-destination
    check, which needs the tree to exist.
    """
    process = spec.get("process")
    if not isinstance(process, Mapping):
        raise InvalidArgument("process is missing")
    validate_process(process)
    root = spec.get("root")
    if not isinstance(root, Mapping) or not root.get("path"):
        raise InvalidArgument("root.path is missing")
    validate_annotations(spec.get("annotations") or {})
    linux = spec.get("linux") or {}
    namespaces = validate_namespaces(linux.get("namespaces") or [])
    if spec.get("hostname") and "uts" not in namespaces:
        raise InvalidArgument("hostname is set but linux.namespaces has no uts namespace to set it in")
    validate_sysctls(linux.get("sysctl") or {}, namespaces)
    for key in ("uidMappings", "gidMappings"):
        if linux.get(key) and "user" not in namespaces:
            raise InvalidArgument(f"linux.{key} is set but linux.namespaces has no user namespace")
    propagation = linux.get("rootfsPropagation", "")
    if propagation and propagation not in ROOTFS_PROPAGATIONS:
        raise InvalidArgument(f"linux.rootfsPropagation {propagation!r} is not a propagation mode")
    for key in ("maskedPaths", "readonlyPaths"):
        for i, p in enumerate(linux.get(key) or []):
            if not isinstance(p, str) or not p.startswith("/"):
                raise InvalidArgument(f"linux.{key}[{i}] {p!r} must be an absolute path")
    validate_hooks(spec.get("hooks") or {})
    mounts = spec.get("mounts") or []
    if len(mounts) > MAX_MOUNTS:
        raise InvalidArgument(f"mounts has {len(mounts)} entries, more than {MAX_MOUNTS}")
    validate_mount_destinations(mounts, rootfs)


def validate_annotations(annotations: Mapping[str, str]) -> None:
    """Bound the annotations map (count and total bytes)."""
    if len(annotations) > MAX_ANNOTATIONS:
        raise InvalidArgument(f"annotations has {len(annotations)} entries, more than {MAX_ANNOTATIONS}")
    total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if total > MAX_ANNOTATIONS_BYTES:
        raise InvalidArgument(f"annotations total {total} bytes, more than {MAX_ANNOTATIONS_BYTES}")


def validate_namespaces(namespaces: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Check namespace entries; returns {type: path} ('' for a new namespace)."""
    found: dict[str, str] = {}
    for i, ns in enumerate(namespaces):
        kind = ns.get("type", "")
        if kind not in NAMESPACE_TYPES:
            raise InvalidArgument(f"linux.namespaces[{i}].type {kind!r} is not a namespace type")
        if kind in found:
            raise InvalidArgument(f"linux.namespaces[{i}]: namespace {kind!r} is listed twice")
        path = ns.get("path", "")
        if path and not path.startswith("/"):
            raise InvalidArgument(f"linux.namespaces[{i}].path {path!r} must be absolute")
        found[kind] = path
    return found


def validate_sysctls(sysctl: Mapping[str, str], namespaces: Mapping[str, str]) -> None:
    """Allow only sysctls scoped to a namespace the container has.

    A sysctl outside the container's namespaces would change the whole guest (every
    container of the pod), so ``vm.*`` and friends are refused outright.
    """
    for key in sysctl:
        field = f"linux.sysctl[{key!r}]"
        if key.startswith("net."):
            needed = "network"
        elif key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            needed = "ipc"
        elif key in _UTS_SYSCTLS:
            needed = "uts"
        else:
            raise InvalidArgument(f"{field} is not namespaced: it would change the whole guest")
        if needed not in namespaces:
            raise InvalidArgument(f"{field} needs a {needed} namespace, and linux.namespaces has none")


def validate_hooks(hooks: Mapping[str, Any]) -> None:
    """Hook paths are absolute (the runtime-spec says so) and have no '..' components."""
    for kind, entries in hooks.items():
        for i, hook in enumerate(entries or []):
            path = hook.get("path", "") if isinstance(hook, Mapping) else None
            field = f"hooks.{kind}[{i}].path"
            if not isinstance(path, str) or not path.startswith("/"):
                raise InvalidArgument(f"{field} {path!r} must be an absolute path")
            _check_string(path, field, 4096)
            if ".." in path.split("/"):
                raise InvalidArgument(f"{field} {path!r} must not contain '..'")


def validate_mount_destinations(mounts: Iterable[Mapping[str, Any]], rootfs: str | None) -> None:
    """Every destination is absolute, has no '..', and resolves inside ``rootfs``.

    Resolution uses the "in root" mode of ``agent.paths`` (absolute symlinks are taken
    from the rootfs, the way the OCI runtime will), so what we check is what gets
    mounted over, and nothing can resolve outside the rootfs.
    """
    from agent.paths import resolve_beneath  # only needed when a rootfs is given

    for i, m in enumerate(mounts):
        dest = m.get("destination", "")
        field = f"mounts[{i}].destination"
        if not isinstance(dest, str) or not dest.startswith("/"):
            raise InvalidArgument(f"{field} {dest!r} must be an absolute path")
        _check_string(dest, field, 4096)
        if ".." in dest.split("/"):
            raise InvalidArgument(f"{field} {dest!r} must not contain '..'")
        if rootfs is not None:
            try:
                resolve_beneath(rootfs, dest, in_root=True, allow_missing=True, what=field)
            except PermissionDenied as e:
                raise InvalidArgument(e.message) from None


def _check_string(value: Any, field: str, limit: int) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string")
    if "\0" in value:
        raise InvalidArgument(f"{field} contains a NUL byte")
    if len(value) > limit:
        raise InvalidArgument(f"{field} is longer than {limit} characters")
