"""DeviceWatcher: no event is missed, expiry is explicit, threads may block."""

from __future__ import annotations

import threading
import time

import pytest

from agent.devices.uevent import Uevent
from agent.devices.watcher import DeviceWatcher
from agent.errors import DeadlineExceeded


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def disk(name: str, action: str = "add") -> Uevent:
    return Uevent(action, f"/devices/virtual/block/{name}", {"SUBSYSTEM": "block", "DEVNAME": name})


def by_name(name: str):
    return lambda ev: ev.devname == name


def test_event_before_the_waiter_is_found_in_the_map() -> None:
    w = DeviceWatcher()
    w.feed(disk("vda"))
    h = w.watch(by_name("vda"))
    assert h.done and h.result().devname == "vda" and w.pending == 0


def test_event_after_the_waiter_completes_it() -> None:
    w = DeviceWatcher()
    h = w.watch(by_name("vdb"))
    assert not h.done and w.pending == 1
    assert w.feed(disk("vdx")) == []
    assert w.feed(disk("vdb")) == [h]
    assert h.done and h.event.devname == "vdb" and w.pending == 0


def test_remove_forgets_and_change_is_ignored() -> None:
    w = DeviceWatcher()
    w.feed(disk("vdc"))
    w.feed(disk("vdc", "remove"))
    assert "/devices/virtual/block/vdc" not in w.seen
    h = w.watch(by_name("vdc"))
    w.feed(disk("vdc", "change"))
    assert not h.done
    w.feed(disk("vdc"))
    assert h.done


def test_expiry_is_driven_by_poll_expired() -> None:
    clock = FakeClock()
    w = DeviceWatcher(default_timeout=3.0, clock=clock)
    h = w.watch(by_name("vdz"), description="virtio-blk disk at PCI path 02.0")
    late = w.watch(by_name("vdy"), timeout=10)
    assert w.next_deadline() == 103.0
    clock.now = 102.9
    assert w.poll_expired() == []
    clock.now = 103.0
    assert w.poll_expired() == [h]
    with pytest.raises(DeadlineExceeded, match=r"timeout after 3s waiting for uevent of virtio-blk disk"):
        h.result()
    assert w.next_deadline() == 110.0 and not late.done
    w.feed(disk("vdz"))  # too late for the expired waiter: nothing changes
    assert h.error is not None


def test_callbacks_run_on_completion_and_immediately_when_done() -> None:
    w = DeviceWatcher()
    got = []
    h = w.watch(by_name("vde"))
    h.add_done_callback(lambda hh: got.append(("cb1", hh.result().devname)))
    w.feed(disk("vde"))
    h.add_done_callback(lambda hh: got.append(("cb2", hh.result().devname)))
    assert got == [("cb1", "vde"), ("cb2", "vde")]


def test_cancel_and_faulty_matcher() -> None:
    w = DeviceWatcher()
    h = w.watch(by_name("vdf"))
    h.cancel()
    assert w.pending == 0
    bad = w.watch(lambda ev: 1 / 0)
    good = w.watch(by_name("vdg"))
    w.feed(disk("vdg"))
    assert good.done and not bad.done


def test_transform_and_pending_result() -> None:
    w = DeviceWatcher()
    h = w.watch(by_name("vdh"), transform=lambda ev: "/dev/" + ev.devname)
    with pytest.raises(RuntimeError, match="still pending"):
        h.result()
    w.feed(disk("vdh"))
    assert h.result() == "/dev/vdh"


def test_thread_blocks_until_another_thread_feeds() -> None:
    w = DeviceWatcher(default_timeout=20)
    h = w.watch(by_name("vdi"))
    feeder = threading.Timer(0.2, lambda: w.feed(disk("vdi")))
    feeder.start()
    t0 = time.monotonic()
    assert h.wait().devname == "vdi"
    assert time.monotonic() - t0 < 10
    feeder.join()


def test_thread_wait_expires_by_itself() -> None:
    w = DeviceWatcher(default_timeout=0.3)
    h = w.watch(by_name("never"), description="SCSI disk 0:9")
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="SCSI disk 0:9"):
        h.wait()
    assert 0.25 <= time.monotonic() - t0 < 5


def test_concurrent_watch_and_feed_never_lose_an_event() -> None:
    """Hammer watch() and feed() from two threads: every waiter completes."""
    w = DeviceWatcher(default_timeout=30)
    names = [f"d{i}" for i in range(300)]
    handles = []

    def feed_all() -> None:
        for n in names:
            w.feed(disk(n))

    t = threading.Thread(target=feed_all)
    t.start()
    for n in names:
        handles.append(w.watch(by_name(n)))
    t.join()
    assert all(h.done for h in handles) and w.pending == 0
