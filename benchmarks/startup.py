"""Agent startup: exec to serving, and exec to the first Health.Check answered.

The agent is started as a guest starts it: ``python3 -S`` (no site hooks),
PYTHONPATH set to the checkout and site-packages, no command-line arguments,
the address from ``KATA_AGENT_SERVER_ADDR``. Two figures per run:

* **serving**: exec until the agent logs "serving", i.e. has imported
  everything an idle agent holds, configured itself and listens (taken from
  the line's own timestamp, so the probe's polling does not count);
* **first Check**: exec until a raw Health.Check frame on a fresh connection
  is answered SERVING (polled every millisecond).

In the same run, ``python3 -c pass`` and ``python3 -S -c pass`` give the
interpreter's own floor on this machine, and ``--pid1`` adds the agent as
PID 1 of fresh namespaces (unshare), which also pays for init mode's mounts.
Target: first Check ≤ 150 ms.

Usage: python3 benchmarks/startup.py [--runs N] [--pid1]
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import gopeer, median, table
from footprint import lean_env

TARGET_MS = 150.0
NAMESPACES = ["unshare", "--fork", "--kill-child=SIGKILL", "--pid", "--mount", "--net", "--uts", "--ipc"]


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of an agent log ``time`` (RFC 3339, UTC, nanoseconds)."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def interpreter_ms(flags: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)
        out.append((time.monotonic() - t0) * 1e3)
    return out


def agent_once(prefix: list[str]) -> dict[str, float]:
    """One cold start: ms to 'serving' and to the first Check answered."""
    d = Path(tempfile.mkdtemp(prefix="startup-"))
    path = str(d / "agent.sock")
    cmdline = d / "cmdline"
    cmdline.write_text("\n")
    env = lean_env()
    env["KATA_AGENT_SERVER_ADDR"] = f"unix://{path}"
    env["KATA_AGENT_CMDLINE_PATH"] = str(cmdline)  # not the host's kernel line
    log = tempfile.TemporaryFile()  # noqa: SIM115 - read after the child is gone, then closed
    wall0 = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen([*prefix, sys.executable, "-S", "-m", "agent"], env=env, stderr=log)
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"agent exited {proc.returncode}: {log.read().decode()}")
            if os.path.exists(path) and gopeer.probe_check(path, timeout=2.0):
                check_ms = (time.monotonic() - t0) * 1e3
                break
            if time.monotonic() - t0 > 30:
                raise TimeoutError("agent did not answer Check within 30 s")
            time.sleep(0.001)
    finally:
        if prefix:  # unshare does not pass SIGTERM on: stop PID 1 itself
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            for kid in kids:
                os.kill(int(kid), 15)
        else:
            proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    log.seek(0)
    serving_ms = float("nan")
    for line in log.read().decode(errors="replace").splitlines():
        if '"msg":"serving"' in line:
            serving_ms = (_epoch(json.loads(line)["time"]) - wall0) * 1e3
            break
    log.close()
    return {"serving_ms": serving_ms, "check_ms": check_ms}


def summary(name: str, values: list[float]) -> list[object]:
    return [name, median(values), min(values), max(values)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="cold starts per row; medians are printed")
    ap.add_argument("--pid1", action="store_true", help="also start the agent as PID 1 of new namespaces")
    args = ap.parse_args()

    rows = [
        summary("python3 -c pass", interpreter_ms([], args.runs)),
        summary("python3 -S -c pass", interpreter_ms(["-S"], args.runs)),
    ]
    variants = [("kata-agent", [])]
    if args.pid1:
        variants.append(("kata-agent as PID 1 (unshare)", NAMESPACES))
    verdicts = []
    for name, prefix in variants:
        runs = [agent_once(prefix) for _ in range(args.runs)]
        serving = [r["serving_ms"] for r in runs]
        check = [r["check_ms"] for r in runs]
        rows.append(summary(f"{name}: exec -> serving", serving))
        rows.append(summary(f"{name}: exec -> first Check", check))
        ok = median(check) <= TARGET_MS
        verdicts.append(
            f"{name}: median first Check {median(check):.0f} ms, target {TARGET_MS:.0f} ms: {'met' if ok else 'MISSED'}"
        )
    print(f"startup, {args.runs} cold starts per row (ms)")
    print(table(["", "median", "min", "max"], rows))
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
