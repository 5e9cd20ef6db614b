"""Longer fuzzing runs than the test suite's: frames, dispatch, in-process dispatch, random sweeps.

Each run prints what it did (inputs, calls, calls/s, the slowest reply, status codes per
method) and fails loudly on a crash, a hang, a malformed reply or an UNKNOWN answer (an
exception a handler did not mean).  libFuzzer writes a crashing input as
``WORK/crash-*`` and the dispatch fuzzers the requests that led to it as
``WORK/history-*.jsonl`` (replay: ``python -m tests.hardening.fuzz_dispatch --address A
--replay FILE``); new interesting inputs stay in ``WORK/corpus-*`` (``--merge`` adds the
frame ones to tests/hardening/corpus).

  frames      atheris on the frame decoder and the sans-IO state machines (in-process)
  dispatch    atheris over a real socket to a real agent in the sandbox
  inprocess   the same, with the agent served from the fuzzer's process inside the
              sandbox, so atheris instruments the agent's code and coverage guides it
  sweep       every method, generated and mutated payloads, random seeds, no atheris

Usage: python3 benchmarks/fuzz.py [MODE...] [--seconds S] [--work DIR] [--merge]
(default: all modes, 60 s each).  Needs root (namespaces) and atheris.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, table

from tests.hardening import fuzzlib
from tests.hardening.sandbox import SandboxedAgent, run_in_sandbox

MODES = ("frames", "dispatch", "inprocess", "sweep")


def _libfuzzer_stats(stderr: str) -> dict[str, str]:
    """The last status line of libFuzzer (runs, coverage, corpus size, exec/s)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("#") and "cov:" in line:
            fields = line.split()
            out = {"runs": fields[0].lstrip("#")}
            for key in ("cov:", "ft:", "corp:", "exec/s:"):
                if key in fields:
                    out[key.rstrip(":")] = fields[fields.index(key) + 1]
            return out
    return {}


def _check(out: subprocess.CompletedProcess[str], what: str) -> None:
    if out.returncode != 0:
        print(out.stdout[-4000:], out.stderr[-8000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{what}: the fuzzer found a problem (exit {out.returncode}); see above")


def frames(seconds: int, work: Path) -> dict[str, object]:
    corpus = work / "corpus-frames"
    corpus.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "tests.hardening.fuzz_frames", f"-max_total_time={seconds}"]
    argv += [f"-artifact_prefix={work}/", str(corpus), str(fuzzlib.CORPUS / "frames")]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 120)
    _check(out, "frames")
    return {"mode": "frames", **_libfuzzer_stats(out.stderr), "new_corpus": len(list(corpus.iterdir()))}


def _dispatch_figures(mode: str, out: subprocess.CompletedProcess[str], corpus: Path) -> dict[str, object]:
    _check(out, mode)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    codes: dict[str, int] = {}
    for per in figures["codes"].values():
        for code, n in per.items():
            codes[code] = codes.get(code, 0) + n
    return {
        "mode": mode,
        "inputs": figures["inputs"],
        "calls": figures["calls"],
        "calls/s": figures["calls_per_second"],
        "slowest_ms": figures["slowest_reply_ms"],
        "methods": figures["methods"],
        **_libfuzzer_stats(out.stderr),
        "codes": codes,
    }


def dispatch(seconds: int, work: Path) -> dict[str, object]:
    corpus = work / "corpus-dispatch"
    corpus.mkdir(exist_ok=True)
    with SandboxedAgent(work / "guest-dispatch") as agent:
        argv = [sys.executable, "-m", "tests.hardening.fuzz_dispatch", "--address", agent.address]
        argv += ["--history", str(work / "history-dispatch.jsonl")]
        argv += [
            "--budget",
            str(seconds),
            f"-artifact_prefix={work}/",
            str(corpus),
            str(fuzzlib.CORPUS / "dispatch"),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 180)
        figures = _dispatch_figures("dispatch", out, corpus)
        fuzzlib.raw_check(agent.address)
        figures["agent_pss_mb"] = round(agent.memory_kb()["Pss"] / 1024, 1)
    return figures


def inprocess(seconds: int, work: Path) -> dict[str, object]:
    scratch = (work / "guest-inprocess").resolve()
    scratch.mkdir(exist_ok=True)
    corpus = scratch / "corpus"
    corpus.mkdir(exist_ok=True)
    seeds = scratch / "seeds"
    shutil.copytree(fuzzlib.CORPUS / "dispatch", seeds, dirs_exist_ok=True)
    argv = [sys.executable, "-m", "tests.hardening.fuzz_dispatch", "--in-process"]
    argv += ["--address", f"unix://{scratch}/agent.sock", "--budget", str(seconds)]
    argv += ["--history", str(scratch / "history-inprocess.jsonl")]
    argv += [f"-artifact_prefix={scratch}/", str(corpus), str(seeds)]
    out = run_in_sandbox(scratch, argv, timeout=seconds + 240, capture_output=True)
    return _dispatch_figures("inprocess", out, corpus)


def sweep(seconds: int, work: Path) -> dict[str, object]:
    tally = fuzzlib.Tally()
    seeds = 0
    start = time.monotonic()
    with SandboxedAgent(work / "guest-sweep") as agent:
        while time.monotonic() - start < seconds:
            seed = random.randrange(1 << 30)
            part = fuzzlib.sweep(agent.address, fuzzlib.RandomSource(seed), per_method=20)
            seeds += 1
            if part.unknown:
                print(part.summary(), file=sys.stderr)
                raise SystemExit(
                    f"sweep: UNKNOWN answers with seed {seed} (KATA_FUZZ_SEED={seed} reproduces)"
                )
            for method, per in part.codes.items():
                mine = tally.codes.setdefault(method, {})
                for code, n in per.items():
                    mine[code] = mine.get(code, 0) + n
            tally.calls += part.calls
            tally.max_latency = max(tally.max_latency, part.max_latency)
        pss = round(agent.memory_kb()["Pss"] / 1024, 1)
    elapsed = time.monotonic() - start
    codes: dict[str, int] = {}
    for per in tally.codes.values():
        for code, n in per.items():
            codes[code] = codes.get(code, 0) + n
    return {
        "mode": "sweep",
        "seeds": seeds,
        "calls": tally.calls,
        "calls/s": round(tally.calls / elapsed),
        "slowest_ms": round(tally.max_latency * 1000),
        "methods": len(tally.codes),
        "agent_pss_mb": pss,
        "codes": codes,
    }


def merge(work: Path) -> None:
    """Minimise the new inputs into the committed corpus (libFuzzer -merge=1)."""
    for kind, module in (("frames", "fuzz_frames"), ("dispatch", "fuzz_dispatch")):
        found = work / f"corpus-{kind}"
        if not found.is_dir():
            continue
        argv = [sys.executable, "-m", f"tests.hardening.{module}"]
        if kind == "dispatch":
            print("merge: dispatch inputs need a live agent; copy them by hand if wanted", file=sys.stderr)
            continue
        argv += ["-merge=1", str(fuzzlib.CORPUS / kind), str(found)]
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modes", nargs="*", metavar="MODE", help=f"any of {', '.join(MODES)} (default: all)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--work", type=Path, help="keep corpora and crashes here (default: a temp dir)")
    parser.add_argument("--merge", action="store_true", help="merge new frame inputs into the corpus")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kata-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    runners = {"frames": frames, "dispatch": dispatch, "inprocess": inprocess, "sweep": sweep}
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    results = []
    for mode in args.modes or MODES:
        print(f"== {mode}: {args.seconds} s", file=sys.stderr)
        results.append(runners[mode](args.seconds, work))
    keys = [
        "mode",
        "runs",
        "inputs",
        "calls",
        "calls/s",
        "exec/s",
        "cov",
        "slowest_ms",
        "methods",
        "agent_pss_mb",
    ]
    print(table(keys, [[r.get(k, "") for k in keys] for r in results]))
    for r in results:
        if "codes" in r:
            print(f"{r['mode']}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items())))  # type: ignore[union-attr]
    print(f"excluded from dispatch fuzzing: {json.dumps(fuzzlib.EXCLUDED, indent=1)}")
    if args.merge:
        merge(work)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
