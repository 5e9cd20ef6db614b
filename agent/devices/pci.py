"""PCI paths (``02/01``: slot[.function] per bridge hop from the root bus) and
their resolution to sysfs device paths, under a configurable sysfs root.

The runtime names a hot-plugged device by the chain of slots that leads to it
through PCI bridges; only the guest knows which bus number each bridge got, so
we walk ``<bridge>/pci_bus/`` in sysfs to find the next bus.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from agent.errors import InvalidArgument, NotFound

SLOT_MAX = 0x1F
FUNCTION_MAX = 0x7
DEFAULT_ROOT_BUS = "/devices/pci0000:00"
_HEX = re.compile(r"^[0-9a-fA-F]{1,2}$")


class _SlotFn(NamedTuple):
    slot: int
    function: int


class SlotFn(_SlotFn):
    """One hop: a slot (device) and function number on a bus."""

    __slots__ = ()

    def __new__(cls, slot: int, function: int = 0) -> SlotFn:
        if not 0 <= slot <= SLOT_MAX:
            raise InvalidArgument(f"PCI slot {slot:#x} out of range [0..{SLOT_MAX:#x}]")
        if not 0 <= function <= FUNCTION_MAX:
            raise InvalidArgument(f"PCI function {function:#x} out of range [0..{FUNCTION_MAX:#x}]")
        return super().__new__(cls, slot, function)

    @classmethod
    def parse(cls, text: str) -> SlotFn:
        slot, dot, func = text.partition(".")
        if not _HEX.match(slot) or (dot and not re.match(r"^[0-7]$", func)):
            raise InvalidArgument(f"PCI slot/function {text!r} should have the format SS[.F]")
        return cls(int(slot, 16), int(func, 16) if dot else 0)

    def __str__(self) -> str:
        return f"{self.slot:02x}.{self.function:x}"


class _PciPath(NamedTuple):
    slots: tuple[SlotFn, ...]


class PciPath(_PciPath):
    """The slots from the root bus, through bridges, to a device."""

    __slots__ = ()

    def __new__(cls, slots: tuple[SlotFn, ...]) -> PciPath:
        if not slots:
            raise InvalidArgument("PCI path must have at least one element")
        return super().__new__(cls, tuple(slots))

    @classmethod
    def parse(cls, text: str) -> PciPath:
        if not text:
            raise InvalidArgument("empty PCI path")
        return cls(tuple(SlotFn.parse(part) for part in text.split("/")))

    @classmethod
    def from_slots(cls, slots: list[int]) -> PciPath:
        """AddSwapRequest.PCIPath: a list of slot numbers, function 0."""
        return cls(tuple(SlotFn(int(s), 0) for s in slots))

    def __str__(self) -> str:
        return "/".join(str(s) for s in self.slots)


def root_bus_path(sysfs_root: str | os.PathLike[str] = "/sys") -> str:
    """The root PCI bus, relative to the sysfs root (``/devices/pci0000:00`` on x86).

    On arm64 without ACPI the host bridge sits under a platform device
    (``/devices/platform/<addr>.pcie/pci0000:00``); look for it.
    """
    root = Path(sysfs_root)
    if (root / DEFAULT_ROOT_BUS.lstrip("/")).is_dir():
        return DEFAULT_ROOT_BUS
    platform = root / "devices/platform"
    try:
        for entry in sorted(platform.iterdir()):
            if entry.name.endswith(".pcie") and (entry / "pci0000:00").is_dir():
                return f"/devices/platform/{entry.name}/pci0000:00"
    except OSError:
        pass
    return DEFAULT_ROOT_BUS


def pcipath_to_sysfs(root_bus_sysfs: str | os.PathLike[str], path: PciPath) -> str:
    """Relative sysfs path of the device, e.g. ``/0000:00:02.0/0000:01:01.0``.

    ``root_bus_sysfs`` is the absolute directory of the root bus.
    """
    bus = "0000:00"
    relpath = ""
    for i, slotfn in enumerate(path.slots):
        relpath += f"/{bus}:{slotfn}"
        if i == len(path.slots) - 1:
            break  # the final device need not be a bridge
        bridge_bus = Path(root_bus_sysfs, relpath.lstrip("/"), "pci_bus")
        try:
            buses = sorted(os.listdir(bridge_bus))
        except FileNotFoundError:
            raise NotFound(f"PCI bridge {relpath} for path {path} does not exist ({bridge_bus})") from None
        if len(buses) != 1:
            raise NotFound(f"expected exactly one PCI bus in {bridge_bus}, found {len(buses)}")
        bus = buses[0]
    return relpath


def rescan_pci_bus(sysfs_root: str | os.PathLike[str] = "/sys") -> None:
    """Ask the kernel to look for devices it has not noticed yet."""
    Path(sysfs_root, "bus/pci/rescan").write_text("1")
