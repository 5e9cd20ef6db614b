"""The committed generated modules match the .proto sources, and the contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT.parent / "shared" / "contract"


def test_generated_modules_are_fresh() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_contract_has_zero_mismatches() -> None:
    modules = [f"agent.protocols.{name}_pb2" for name in ("agent", "health", "types", "oci", "csi")]
    out = subprocess.run(
        [
            sys.executable,
            str(CONTRACT / "check_contract.py"),
            str(CONTRACT / "kata-agent-api.json"),
            *modules,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 mismatches" in out.stdout


def test_protobuf_uses_upb_backend() -> None:
    from google.protobuf.internal import api_implementation

    assert api_implementation.Type() == "upb"
