"""GetMetrics: Prometheus text for the agent process and the guest, from /proc.

Metric families and labels follow the Kata agent (``kata_agent_*`` for the
agent process, ``kata_guest_*`` for the VM) so existing dashboards keep
working. Every source is optional: a file the kernel does not offer leaves
its family out rather than failing the scrape. No Prometheus client library:
the text format is a few lines of code and costs no resident memory.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

_scrapes = 0
_scrapes_lock = threading.Lock()

CPU_ITEMS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
NETDEV_ITEMS = [
    "recv_bytes",
    "recv_packets",
    "recv_errs",
    "recv_drop",
    "recv_fifo",
    "recv_frame",
    "recv_compressed",
    "recv_multicast",
    "sent_bytes",
    "sent_packets",
    "sent_errs",
    "sent_drop",
    "sent_fifo",
    "sent_colls",
    "sent_carrier",
    "sent_compressed",
]
DISK_ITEMS = [
    "reads",
    "merged",
    "sectors_read",
    "time_reading",
    "writes",
    "writes_merged",
    "sectors_written",
    "time_writing",
    "in_progress",
    "time_in_progress",
    "weighted_time_in_progress",
    "discards",
    "discards_merged",
    "sectors_discarded",
    "time_discarding",
    "flushes",
    "time_flushing",
]
PROC_STAT_FIELDS = {  # /proc/PID/stat field number (1-based) -> item
    10: "minflt",
    11: "cminflt",
    12: "majflt",
    13: "cmajflt",
    14: "utime",
    15: "stime",
    16: "cutime",
    17: "cstime",
    20: "num_threads",
    23: "vsize",
    24: "rss",
}


class _Family:
    def __init__(self, name: str, help_text: str, kind: str = "gauge") -> None:
        self.name, self.help, self.kind = name, help_text, kind
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def render(self) -> str:
        if not self.samples:
            return ""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(
                f"{self.name}{{{label_text}}} {_fmt(value)}" if labels else f"{self.name} {_fmt(value)}"
            )
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**63):
        return str(int(value))
    return repr(float(value))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _snake(key: str) -> str:
    """MemTotal -> mem_total, Active(anon) -> active_anon, SReclaimable -> s_reclaimable."""
    key = key.replace("(", "_").replace(")", "")
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    key = re.sub(r"([A-Z])([A-Z][a-z])", r"\1_\2", key)
    return re.sub(r"_+", "_", key).lower()


def _agent_metrics(proc: Path, clk_tck: int, page: int) -> Iterable[_Family]:
    stat_text = _read(proc / "stat")
    status_text = _read(proc / "status")
    io_text = _read(proc / "io")
    threads = _Family("kata_agent_threads", "Agent process threads")
    total_time = _Family("kata_agent_total_time", "Agent process total time")
    total_vm = _Family("kata_agent_total_vm", "Agent process total VM size")
    total_rss = _Family("kata_agent_total_rss", "Agent process total RSS size")
    proc_stat = _Family("kata_agent_proc_stat", "Agent process statistics.")
    if stat_text:
        # The command name may contain spaces and parentheses: split after the last ')'.
        rest = stat_text[stat_text.rindex(")") + 2 :].split()
        fields = {i + 3: int(v) for i, v in enumerate(rest) if v.lstrip("-").isdigit()}
        threads.add(fields.get(20, 0))
        total_time.add((fields.get(14, 0) + fields.get(15, 0)) / clk_tck)
        total_vm.add(fields.get(23, 0))
        total_rss.add(fields.get(24, 0) * page)
        for num, item in PROC_STAT_FIELDS.items():
            if num in fields:
                proc_stat.add(fields[num], item=item)
    proc_status = _Family("kata_agent_proc_status", "Agent process status.")
    for line in (status_text or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        numeric = len(parts) in (1, 2) and parts[0].isdigit() and (len(parts) == 1 or parts[1] == "kB")
        if numeric and (key.startswith(("Vm", "Rss", "Huge")) or key.endswith("ctxt_switches")):
            proc_status.add(int(parts[0]), item=_snake(key))
    io_stat = _Family("kata_agent_io_stat", "Agent process IO statistics.")
    for line in (io_text or "").splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            io_stat.add(int(value), item=key.strip())
    return [threads, total_time, total_vm, total_rss, proc_status, io_stat, proc_stat]


def _guest_metrics(proc: Path) -> Iterable[_Family]:
    load = _Family("kata_guest_load", "Guest system load.")
    tasks = _Family("kata_guest_tasks", "Guest system load.")
    text = _read(proc / "loadavg")
    if text:
        parts = text.split()
        for item, value in zip(("load1", "load5", "load15"), parts[:3], strict=False):
            load.add(float(value), item=item)
        if len(parts) > 3 and "/" in parts[3]:
            cur, mx = parts[3].split("/")
            tasks.add(int(cur), item="cur")
            tasks.add(int(mx), item="max")

    cpu = _Family("kata_guest_cpu_time", "Guest CPU statistics.")
    for line in (_read(proc / "stat") or "").splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        label = "total" if parts[0] == "cpu" else parts[0][3:]
        for item, value in zip(CPU_ITEMS, parts[1:], strict=False):
            cpu.add(int(value), cpu=label, item=item)

    vmstat = _Family("kata_guest_vm_stat", "Guest virtual memory statistics.")
    for line in (_read(proc / "vmstat") or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            vmstat.add(int(parts[1]), item=parts[0])

    netdev = _Family("kata_guest_netdev_stat", "Guest net devices statistics.")
    for line in (_read(proc / "net/dev") or "").splitlines()[2:]:
        name, _, counters = line.partition(":")
        values = counters.split()
        if len(values) >= len(NETDEV_ITEMS):
            for item, value in zip(NETDEV_ITEMS, values, strict=False):
                netdev.add(int(value), interface=name.strip(), item=item)

    disk = _Family("kata_guest_diskstat", "Disks statistics in system.")
    for line in (_read(proc / "diskstats") or "").splitlines():
        parts = line.split()
        if len(parts) >= 14:
            for item, value in zip(DISK_ITEMS, parts[3:], strict=False):
                disk.add(int(value), disk=parts[2], item=item)

    meminfo = _Family("kata_guest_meminfo", "Statistics about memory usage in the system.")
    for line in (_read(proc / "meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            number = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
            meminfo.add(number, item=_snake(key))
    return [load, tasks, cpu, vmstat, netdev, disk, meminfo]


def get_metrics(proc_root: str = "/proc", pid: int | str = "self") -> str:
    """GetMetrics: the agent's own figures (``pid``) and the guest's, as Prometheus text."""
    global _scrapes
    with _scrapes_lock:
        _scrapes += 1
        count = _scrapes
    scrape = _Family("kata_agent_scrape_count", "Metrics scrape count", "counter")
    scrape.add(count)
    root = Path(proc_root)
    clk_tck = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    families = [scrape, *_agent_metrics(root / str(pid), clk_tck, page), *_guest_metrics(root)]
    return "".join(f.render() for f in families)
