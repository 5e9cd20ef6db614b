"""atheris fuzzer for dispatch: every AgentService method, over a real socket.

An input is either ``Method\\0payload`` (the corpus format: libFuzzer's
mutations of a seed give mutated valid protobuf) or any other bytes, from which
a method and a message are generated field by field (FuzzedDataProvider
choices, so libFuzzer steers them).  Requests are pipelined (up to WINDOW in
flight) with a deadline; each reply is checked by :class:`fuzzlib.WireClient`
(one well-formed response per request, in time).  A handler answering UNKNOWN
raised an exception it did not mean to: that is reported as a crash too.

    python -m tests.hardening.fuzz_dispatch --address unix:///path.sock --budget 10 \\
        [--in-process] [libFuzzer flags...] CORPUS_DIR [SEED_DIRS...]

``--in-process`` serves the agent from this process instead (in a thread), so
atheris instruments the agent's code and coverage guides the fuzzer; run it
inside the sandbox (``benchmarks/fuzz.py`` does).  On success it prints one
JSON line of figures and exits 0 before libFuzzer's own time limit.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time
from typing import Any

import atheris

with atheris.instrument_imports(include=["tests.hardening"]):
    from tests.hardening import fuzzlib

WINDOW = 32
DEADLINE = 0.5  # seconds, sent as timeout_nano: blocking calls answer DEADLINE_EXCEEDED
GRACE = 10.0  # past its deadline, a missing reply is a hang (the loop is stuck)


HISTORY = 2000  # requests kept for the report when something breaks


class Harness:
    def __init__(self, address: str, budget: float, history: str | None = None) -> None:
        self.address = address
        self.budget = budget
        self.history_path = history
        self.history: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=HISTORY)
        self.methods = fuzzlib.fuzzed_methods()
        self.client = fuzzlib.WireClient(address)
        self.tally = fuzzlib.Tally()
        self.started = time.monotonic()
        self.inputs = 0

    def one_input(self, data: bytes) -> None:
        self.inputs += 1
        decoded = fuzzlib.decode_input(data, self.methods)
        if decoded is None:
            src = fuzzlib.AtherisSource(data)
            method = fuzzlib.pick(src, self.methods)
            payload = fuzzlib.random_message(method.request, src)
        else:
            method, payload = decoded
        self.history.append((method.name, payload))
        self.client.send(method, payload, DEADLINE)
        try:
            self.record(self.client.drain(GRACE, window=WINDOW))
        except fuzzlib.Violation:
            self.dump()
            raise
        if time.monotonic() - self.started >= self.budget:
            self.finish()

    def record(self, replies: list[fuzzlib.Reply]) -> None:
        self.tally.add(replies)
        if self.tally.unknown:
            method, (message, payload) = next(iter(self.tally.unknown.items()))
            raise fuzzlib.Violation(
                f"{method} answered UNKNOWN (an uncaught exception): {message}; payload {payload.hex()}"
            )

    def dump(self) -> None:
        """Write the last requests (a replayable sequence: ``--replay FILE``)."""
        if self.history_path:
            with open(self.history_path, "w") as f:
                for name, payload in self.history:
                    f.write(json.dumps({"method": name, "payload": payload.hex()}) + "\n")
            print(f"the last {len(self.history)} requests: {self.history_path}", file=sys.stderr)

    def finish(self) -> None:
        self.record(self.client.drain(GRACE))
        self.client.check()
        fuzzlib.raw_check(self.address)
        elapsed = time.monotonic() - self.started
        figures = {
            "inputs": self.inputs,
            "calls": self.tally.calls,
            "seconds": round(elapsed, 1),
            "calls_per_second": round(self.tally.calls / elapsed),
            "slowest_reply_ms": round(self.tally.max_latency * 1000),
            "methods": len(self.tally.codes),
            "codes": self.tally.codes,
        }
        print(json.dumps(figures), flush=True)
        os._exit(0)


def in_process_agent(address: str) -> Any:
    """A real Agent listening on ``address`` in this process, its code instrumented.

    Its loop runs in a thread (atheris wants the main one); the reaper, which
    installs signal handlers (a main-thread duty), is created here first.  The
    fuzzer talks to the agent over the socket like any client.
    """
    import importlib

    from agent.config import load_config
    from agent.service.routes import ROUTES

    for module in sorted({m for m, _ in ROUTES.values()}):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    from agent.app import Agent

    atheris.instrument_all()
    config, _ = load_config(["--server-addr", address])
    agent = Agent(config)
    agent.reaper  # noqa: B018 - signal handlers from the main thread
    agent.start()
    return agent


def replay(address: str, path: str) -> int:
    """Send a recorded sequence again, pipelined as the fuzzer did; report what it got."""
    methods = {m.name: m for m in fuzzlib.agent_methods()}
    tally = fuzzlib.Tally()
    with open(path) as f:
        entries = [json.loads(line) for line in f]
    with fuzzlib.WireClient(address) as client:
        for entry in entries:
            client.send(methods[entry["method"]], bytes.fromhex(entry["payload"]), DEADLINE)
            tally.add(client.drain(GRACE, window=WINDOW))
        tally.add(client.drain(GRACE))
    print(tally.summary())
    return 1 if tally.unknown else 0


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--address", "--server-addr", dest="address", required=True)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--history", help="where to write the last requests when something breaks")
    parser.add_argument("--replay", help="send a --history file again instead of fuzzing")
    args, rest = parser.parse_known_args(argv[1:])
    agent = in_process_agent(args.address) if args.in_process else None
    if args.replay:
        sys.exit(replay(args.address, args.replay))
    limit = f"-max_total_time={int(args.budget) + 60}"
    libfuzzer_args = [argv[0], limit, "-timeout=60", "-rss_limit_mb=4096", *rest]

    def fuzz() -> None:
        harness = Harness(args.address, args.budget, args.history)
        atheris.Setup(libfuzzer_args, harness.one_input)
        atheris.Fuzz()

    if agent is not None:
        threading.Thread(target=agent.run, name="agent", daemon=True).start()
    fuzz()


if __name__ == "__main__":
    main(sys.argv)
