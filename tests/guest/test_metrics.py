"""GetMetrics: exact figures from a fake /proc, and a sane scrape of the real one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent.guest.metrics import get_metrics


def fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    me = proc / "4242"
    me.mkdir(parents=True)
    tck = os.sysconf("SC_CLK_TCK")
    stat = ["4242", "(agent (x) y)", "S"] + ["0"] * 49
    stat[13], stat[14] = str(3 * tck), str(tck)  # utime, stime (fields 14, 15)
    stat[19] = "5"  # num_threads
    stat[22] = "123456789"  # vsize
    stat[23] = "100"  # rss pages
    (me / "stat").write_text(" ".join(stat) + "\n")
    (me / "status").write_text(
        "Name:\tagent\nVmRSS:\t  4000 kB\nRssAnon:\t 100 kB\nvoluntary_ctxt_switches:\t7\n"
    )
    (me / "io").write_text("rchar: 10\nwchar: 20\nread_bytes: 4096\n")
    (proc / "loadavg").write_text("0.50 0.25 0.10 2/123 999\n")
    (proc / "stat").write_text("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 11 12 13 14 15 16 17 18 19 20\nintr 1 2 3\n")
    (proc / "vmstat").write_text("nr_free_pages 1000\npgfault 77\n")
    (proc / "net").mkdir()
    (proc / "net/dev").write_text(
        "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n"
        "  eth0: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n"
    )
    (proc / "diskstats").write_text(" 254 0 vda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n")
    (proc / "meminfo").write_text(
        "MemTotal:        2048 kB\nActive(anon):     16 kB\nSReclaimable:      8 kB\nHugePages_Total:   3\n"
    )
    return proc


def value(text: str, series: str) -> str:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m, f"{series} missing from:\n{text}"
    return m.group(1)


def test_exact_figures_from_fake_proc(tmp_path: Path) -> None:
    text = get_metrics(str(fake_proc(tmp_path)), pid=4242)
    page = os.sysconf("SC_PAGE_SIZE")
    assert value(text, "kata_agent_threads") == "5"
    assert value(text, "kata_agent_total_time") == "4"
    assert value(text, "kata_agent_total_vm") == "123456789"
    assert value(text, "kata_agent_total_rss") == str(100 * page)
    assert value(text, 'kata_agent_proc_status{item="vm_rss"}') == "4000"
    assert value(text, 'kata_agent_proc_status{item="voluntary_ctxt_switches"}') == "7"
    assert value(text, 'kata_agent_io_stat{item="read_bytes"}') == "4096"
    assert value(text, 'kata_agent_proc_stat{item="num_threads"}') == "5"
    assert value(text, 'kata_guest_load{item="load1"}') == "0.5"
    assert value(text, 'kata_guest_tasks{item="max"}') == "123"
    assert value(text, 'kata_guest_cpu_time{cpu="total",item="guest_nice"}') == "10"
    assert value(text, 'kata_guest_cpu_time{cpu="0",item="user"}') == "11"
    assert value(text, 'kata_guest_vm_stat{item="pgfault"}') == "77"
    assert value(text, 'kata_guest_netdev_stat{interface="eth0",item="sent_bytes"}') == "300"
    assert value(text, 'kata_guest_diskstat{disk="vda",item="time_flushing"}') == "17"
    assert value(text, 'kata_guest_meminfo{item="mem_total"}') == str(2048 * 1024)
    assert value(text, 'kata_guest_meminfo{item="active_anon"}') == str(16 * 1024)
    assert value(text, 'kata_guest_meminfo{item="s_reclaimable"}') == str(8 * 1024)
    assert value(text, 'kata_guest_meminfo{item="huge_pages_total"}') == "3"
    assert "# TYPE kata_agent_scrape_count counter" in text


def test_scrape_count_increments_and_missing_sources_are_skipped(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    first = int(value(get_metrics(str(empty)), "kata_agent_scrape_count"))
    text = get_metrics(str(empty))
    assert int(value(text, "kata_agent_scrape_count")) == first + 1
    assert "kata_guest" not in text and "kata_agent_threads" not in text


def test_real_proc_is_valid_exposition() -> None:
    text = get_metrics()
    line = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"\\\n]*",?)+\})? -?[0-9.e+-]+$')
    for row in text.splitlines():
        assert row.startswith("# ") or line.match(row), row
    assert int(value(text, "kata_agent_threads")) >= 1
    assert float(value(text, 'kata_guest_meminfo{item="mem_total"}')) > 0
    assert 'kata_guest_netdev_stat{interface="lo",item="recv_bytes"}' in text
