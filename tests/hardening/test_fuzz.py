"""Fuzzing the frame decoder and dispatch of a real agent over a real socket.

Budgets are small here (seconds); ``benchmarks/fuzz.py`` runs the same
fuzzers for longer.  What must hold: every request gets exactly one
well-formed reply before its deadline (plus slack for a noisy machine), no
handler raises an exception it did not mean (UNKNOWN), the connection is never
dropped, and the agent answers Check afterwards.  ``KATA_FUZZ_SEED`` changes
the random sweep's seed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hardening import fuzzlib, hostile
from tests.hardening.sandbox import REPO, SandboxedAgent

SEED = int(os.environ.get("KATA_FUZZ_SEED", "6"))


def _atheris(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("atheris")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def test_exclusions_are_explained() -> None:
    names = {m.name for m in fuzzlib.agent_methods()}
    assert set(fuzzlib.EXCLUDED) <= names
    assert len(fuzzlib.fuzzed_methods()) == len(names) - len(fuzzlib.EXCLUDED)


def test_corpus_covers_every_fuzzed_method() -> None:
    seeds = fuzzlib.seeds_by_method(fuzzlib.fuzzed_methods())
    assert all(seeds.values()), [name for name, found in seeds.items() if not found]


def test_every_method_random_and_mutated_payloads(guest: SandboxedAgent) -> None:
    tally = fuzzlib.sweep(guest.address, fuzzlib.RandomSource(SEED), per_method=24)
    assert not tally.unknown, f"seed {SEED}: handlers raised unexpected exceptions:\n{tally.summary()}"
    assert set(tally.codes) == {m.name for m in fuzzlib.fuzzed_methods()}
    assert guest.alive()
    fuzzlib.raw_check(guest.address)


def test_atheris_dispatch(guest: SandboxedAgent, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = _atheris(
        "tests.hardening.fuzz_dispatch",
        "--address",
        guest.address,
        "--budget",
        "4",
        f"-artifact_prefix={tmp_path}/",
        f"-seed={SEED}",
        str(corpus),
        str(fuzzlib.CORPUS / "dispatch"),
        timeout=120,
    )
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["calls"] > 100 and figures["methods"] > 10, figures
    assert guest.alive()


def test_atheris_frame_decoder(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = _atheris(
        "tests.hardening.fuzz_frames",
        "-max_total_time=3",
        f"-seed={SEED}",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
        str(fuzzlib.CORPUS / "frames"),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-6000:]
    assert "Done" in out.stderr


def test_garbage_and_mutated_frames_over_the_socket(guest: SandboxedAgent) -> None:
    """Raw byte streams on fresh connections: answers, if any, are whole response frames."""
    rng = random.Random(SEED)
    src = fuzzlib.RandomSource(rng)
    frames = fuzzlib.load_corpus("frames")
    assert frames
    for i in range(150):
        data = (
            fuzzlib.mutate(rng.choice(frames), src, frames) if i % 3 else rng.randbytes(rng.randint(1, 4096))
        )
        with fuzzlib.WireClient(guest.address) as client:
            client.sock.setblocking(True)
            client.sock.sendall(data)
            hostile.read_frames(client, 0.01)
        if i % 50 == 49:
            fuzzlib.raw_check(guest.address)
    assert guest.alive()
    fuzzlib.raw_check(guest.address)
