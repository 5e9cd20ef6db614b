"""Hot-plugged devices for CreateContainer: find the guest node, rewrite the OCI spec.

The runtime describes a device two ways:

* a block **storage** (``grpc.Storage`` with driver ``blk``, ``mmioblk``,
  ``scsi`` or ``nvdimm``) the guest must mount: ``source`` names the device;
* a **device** (``grpc.Device``) to expose inside the container at
  ``container_path``: ``id``/``vm_path`` name it. The spec's
  ``linux.devices`` entry for ``container_path`` carries the *host's*
  major:minor, which mean nothing in the guest; they are replaced with the
  guest node's numbers, and the device-cgroup rules that named the host's
  numbers are rewritten the same way (one allow rule is added when none did).

How each kind is found (the same as the upstream agent):

* ``blk``: a ``/dev/...`` path is used as is; anything else is a PCI path
  (``02/01``) and the agent waits for the virtio-blk disk under it. For a
  device the PCI path is ``id`` (or ``vm_path`` when that is not a /dev path).
* ``mmioblk``, ``nvdimm``: ``/dev/<name>``; used at once when the node
  exists, else waited for (nvdimm: a pmem disk under the ACPI tree).
* ``scsi``: ``target:lun``; the SCSI hosts are asked to scan for it (in a
  worker thread) and the agent waits for its disk.

Waits go through the agent's uevent component, bounded by
``hotplug_timeout``; the loop never blocks. A device that never appears fails
with DeadlineExceeded naming what was awaited. A node that is (a partition of)
the guest's own root disk is refused with PermissionDenied.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agent.devices.block import (
    DeviceNode,
    ScsiBlockMatcher,
    parse_scsi_addr,
    scan_scsi_bus,
    watch_nvdimm,
    watch_virtio_blk_mmio,
    watch_virtio_blk_pci,
)
from agent.errors import AgentError, InvalidArgument, PermissionDenied, Unimplemented
from agent.tasks import Steps, task
from ttrpc.loop import Future

if TYPE_CHECKING:
    from agent.storage import StorageSpec
    from agent.uevents import Uevents

BLOCK_TYPES = ("blk", "mmioblk", "scsi", "nvdimm")
#: Known to the Kata runtime but not handled by this agent.
UNSUPPORTED_TYPES = ("blk-ccw", "vfio", "vfio-pci", "vfio-pci-gk", "vfio-ap", "vfio-ap-cold")
DEV_ROOT = "/dev"


@dataclass(frozen=True)
class DeviceSpec:
    """One ``grpc.Device`` as plain values."""

    id: str
    type: str
    vm_path: str = ""
    container_path: str = ""
    options: tuple[str, ...] = ()

    def check(self) -> None:
        """Refuse what cannot be handled before anything is waited for or mounted."""
        if self.type in UNSUPPORTED_TYPES:
            raise Unimplemented(f"device {self.id or self.vm_path!r}: type {self.type!r} is not supported")
        if self.type not in BLOCK_TYPES:
            raise InvalidArgument(f"device {self.id or self.vm_path!r}: unknown device type {self.type!r}")
        if not self.id and not self.vm_path:
            raise InvalidArgument(f"device of type {self.type}: both id and vm_path are empty")
        if not self.container_path.startswith("/"):
            raise InvalidArgument(
                f"device {self.id or self.vm_path!r}: container_path {self.container_path!r} "
                "must be an absolute path"
            )

    def reference(self) -> str:
        """What names the device in the guest, per type (see the module docstring)."""
        if self.type == "blk":
            if self.vm_path.startswith("/dev/"):
                return self.vm_path
            return self.id or self.vm_path
        if self.type == "scsi":
            return self.id or self.vm_path
        return self.vm_path or self.id


@dataclass(frozen=True)
class GuestNode:
    """A guest device node: path, OCI type (``b``/``c``) and numbers."""

    path: str
    type: str
    major: int
    minor: int


# ---------------------------------------------------------------- waiting


def resolve(
    uevents: Uevents | None,
    kind: str,
    ref: str,
    what: str,
    *,
    sysfs_root: str = "/sys",
    dev_root: str = DEV_ROOT,
) -> Future[str]:
    """The guest node path of device ``ref`` of ``kind`` (a loop future, never blocking)."""
    return _resolve(uevents, kind, ref, what, sysfs_root, dev_root)


@task
def _resolve(
    uevents: Uevents | None, kind: str, ref: str, what: str, sysfs_root: str, dev_root: str
) -> Steps[str]:
    if not ref:
        raise InvalidArgument(f"{what}: no device given")
    start: Callable[[Any], Any] | None = None
    if kind == "blk":
        if ref.startswith("/"):
            return ref
        start = lambda w: watch_virtio_blk_pci(w, ref, sysfs_root=sysfs_root, dev_root=dev_root)  # noqa: E731
    elif kind == "mmioblk":
        if os.path.exists(ref):
            return ref
        start = lambda w: watch_virtio_blk_mmio(w, ref, dev_root=dev_root)  # noqa: E731
    elif kind == "nvdimm":
        if os.path.exists(ref):
            return ref
        start = lambda w: watch_nvdimm(w, ref, dev_root=dev_root)  # noqa: E731
    elif kind != "scsi":
        raise InvalidArgument(f"{what}: {kind!r} is not a block device driver")
    if uevents is None:
        raise Unimplemented(f"{what}: device hot-plug needs the agent's uevent component")
    try:
        if kind == "scsi":
            parse_scsi_addr(ref)
            matcher = ScsiBlockMatcher(ref)
            fut = uevents.wait(lambda w: w.watch(matcher, None, f"SCSI disk {ref}", DeviceNode(dev_root)))
            if not fut.done():
                try:  # the scan writes sysfs and may take a while: not on the loop
                    yield uevents.loop.run_in_thread(scan_scsi_bus, ref, sysfs_root)
                except BaseException:
                    fut.cancel()
                    raise
            node = yield fut
        else:
            assert start is not None
            node = yield uevents.wait(start)
    except AgentError as exc:
        raise type(exc)(f"{what}: {exc.message}") from None
    return node


def resolve_storage(
    uevents: Uevents | None, spec: StorageSpec, *, sysfs_root: str = "/sys", dev_root: str = DEV_ROOT
) -> Future[StorageSpec]:
    """``spec`` with ``source`` replaced by the guest node of its device (block drivers)."""
    what = f"storage {spec.driver} {spec.source!r} for {spec.mount_point!r}"
    fut = resolve(uevents, spec.driver, spec.source, what, sysfs_root=sysfs_root, dev_root=dev_root)
    out: Future[StorageSpec] = Future()

    def done(f: Future[str]) -> None:
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(replace(spec, source=f.result()))

    fut.add_done_callback(done)
    return out


def resolve_device(
    uevents: Uevents | None, device: DeviceSpec, *, sysfs_root: str = "/sys", dev_root: str = DEV_ROOT
) -> Future[str]:
    """The guest node path of a ``grpc.Device``."""
    what = f"device {device.id or device.vm_path!r} ({device.type}) for {device.container_path!r}"
    return resolve(uevents, device.type, device.reference(), what, sysfs_root=sysfs_root, dev_root=dev_root)


# ---------------------------------------------------------------- guest nodes


def guest_node(path: str, what: str, *, block: bool = True) -> GuestNode:
    """Stat a guest device node (blocking)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidArgument(f"{what}: guest device {path} does not exist") from None
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode) and not block:
        kind = "c"
    else:
        raise InvalidArgument(f"{what}: {path} is not a block device node")
    return GuestNode(path, kind, os.major(st.st_rdev), os.minor(st.st_rdev))


def _whole_disk(major: int, minor: int, sysfs_root: str) -> tuple[int, int] | None:
    """The disk a block device belongs to (itself if not a partition); None if unknown."""
    real = os.path.realpath(os.path.join(sysfs_root, "dev/block", f"{major}:{minor}"))
    if not os.path.isdir(real):
        return None
    if not os.path.exists(os.path.join(real, "partition")):
        return (major, minor)
    try:
        with open(os.path.join(os.path.dirname(real), "dev")) as f:
            ma, _, mi = f.read().strip().partition(":")
        return (int(ma), int(mi))
    except (OSError, ValueError):
        return None


def root_disks(sysfs_root: str = "/sys", root: str = "/") -> set[tuple[int, int]]:
    """The device of the guest's root filesystem and the disk holding it."""
    st = os.stat(root)
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    disks = {dev}
    whole = _whole_disk(*dev, sysfs_root)
    if whole is not None:
        disks.add(whole)
    return disks


def refuse_root_disk(node: GuestNode, what: str, *, sysfs_root: str = "/sys", root: str = "/") -> None:
    """PermissionDenied when ``node`` is the guest's root disk or one of its partitions."""
    if node.type != "b":
        return
    roots = root_disks(sysfs_root, root)
    dev = (node.major, node.minor)
    if dev in roots or _whole_disk(*dev, sysfs_root) in roots:
        raise PermissionDenied(
            f"{what}: {node.path} ({node.major}:{node.minor}) is the guest's root disk; refusing to expose it"
        )


def check_storage_node(spec: StorageSpec, *, sysfs_root: str = "/sys", root: str = "/") -> None:
    """A resolved block storage's source: a block node, not the root disk (blocking)."""
    what = f"storage {spec.driver} for {spec.mount_point!r}"
    refuse_root_disk(guest_node(spec.source, what), what, sysfs_root=sysfs_root, root=root)


# ---------------------------------------------------------------- the OCI spec


def update_spec_devices(spec: dict[str, Any], devices: list[tuple[DeviceSpec, GuestNode]]) -> dict[str, Any]:
    """A copy of ``spec`` whose ``linux.devices`` and device-cgroup rules use the guest's numbers.

    Each device's ``linux.devices`` entry (by ``container_path``) gets the guest
    node's major:minor. Every ``linux.resources.devices`` rule that named the
    entry's original (host) type:major:minor is rewritten to the guest's, in one
    pass over the original values so that swapped numbers cannot chain; a device
    no rule named gets an ``rwm`` allow rule.
    """
    spec = dict(spec)
    linux = spec["linux"] = dict(spec.get("linux") or {})
    entries = [dict(d) for d in linux.get("devices") or ()]
    renames: dict[tuple[str, int, int], tuple[int, int]] = {}
    seen: set[str] = set()
    unnamed: list[GuestNode] = []
    for device, node in devices:
        if device.container_path in seen:
            raise InvalidArgument(f"device container_path {device.container_path!r} is given twice")
        seen.add(device.container_path)
        matches = [e for e in entries if e.get("path") == device.container_path]
        if not matches:
            raise InvalidArgument(
                f"device {device.id or device.vm_path!r}: linux.devices has no entry for "
                f"container_path {device.container_path!r}"
            )
        for entry in matches:
            given = entry.get("type") or node.type
            if given != node.type:
                raise InvalidArgument(
                    f"device {device.container_path!r}: linux.devices says type {given!r} but the guest "
                    f"node {node.path} is {node.type!r}"
                )
            host = (node.type, int(entry.get("major", 0)), int(entry.get("minor", 0)))
            renames[host] = (node.major, node.minor)
            entry.update(type=node.type, major=node.major, minor=node.minor)
            if host not in _rule_keys(linux):
                unnamed.append(node)
    linux["devices"] = entries
    resources = linux["resources"] = dict(linux.get("resources") or {})
    rules = []
    for rule in resources.get("devices") or ():
        rule = dict(rule)
        key = _rule_key(rule)
        if key is not None and key in renames:
            rule["major"], rule["minor"] = renames[key]
        rules.append(rule)
    for node in unnamed:
        rules.append(
            {"allow": True, "type": node.type, "major": node.major, "minor": node.minor, "access": "rwm"}
        )
    resources["devices"] = rules
    return spec


def _rule_key(rule: dict[str, Any]) -> tuple[str, int, int] | None:
    if "major" not in rule or "minor" not in rule or rule.get("type") not in ("b", "c"):
        return None
    return (rule["type"], int(rule["major"]), int(rule["minor"]))


def _rule_keys(linux: dict[str, Any]) -> set[tuple[str, int, int]]:
    rules = (linux.get("resources") or {}).get("devices") or ()
    return {k for k in (_rule_key(r) for r in rules) if k is not None}


def apply_devices(
    spec: dict[str, Any],
    devices: list[tuple[DeviceSpec, str]],
    sysfs_root: str = "/sys",
    root: str = "/",
) -> dict[str, Any]:
    """Stat each resolved node, refuse the root disk, rewrite the spec (blocking)."""
    nodes = []
    for device, path in devices:
        what = f"device {device.id or device.vm_path!r} for {device.container_path!r}"
        node = guest_node(path, what)
        refuse_root_disk(node, what, sysfs_root=sysfs_root, root=root)
        nodes.append((device, node))
    return update_spec_devices(spec, nodes)
