"""Storage drivers for block devices (``blk``, ``mmioblk``, ``scsi``, ``nvdimm``).

Finding the device is not done here: by the time the storage manager calls
these drivers (in a worker thread), the sandbox has already waited for the
device through the agent's uevent component (:mod:`agent.devices.hotplug`)
and replaced ``source`` with the guest node (``/dev/vdb``...). The driver only
checks that the source is a block device node and mounts it with the
storage's fstype and options; reference counting and rollback are the
storage manager's.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import InvalidArgument, NotFound
from agent.storage import StorageSpec, _mount_checked, parse_mount_options, register_driver

BLOCK_DRIVERS = ("blk", "mmioblk", "scsi", "nvdimm")


def check_block_node(path: str, what: str) -> os.stat_result:
    """``path`` must be an absolute path to an existing block device node."""
    if not path.startswith("/"):
        raise InvalidArgument(f"{what}: {path!r} is not a device node path (was the device resolved?)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{what}: device {path} not found") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidArgument(f"{what}: {path} is not a block device")
    return st


def mount_block(spec: StorageSpec, target: Path) -> bool:
    """Mount the (already resolved) block device ``spec.source`` at ``target``."""
    what = f"storage {spec.driver} {spec.mount_point!r}"
    check_block_node(spec.source, what)
    if not spec.fstype:
        raise InvalidArgument(f"{what}: fstype is empty (a block device needs its filesystem type)")
    _mount_checked(spec, spec.source, target, spec.fstype, parse_mount_options(spec.options))
    return True


for _name in BLOCK_DRIVERS:
    register_driver(_name, mount_block)
