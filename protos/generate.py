"""Regenerate the Python protobuf modules from the .proto sources.

Usage: ``python3 protos/generate.py [--check]``.

protoc writes flat modules that import each other by bare name (``import
types_pb2``); we place them inside packages and rewrite those imports so the
modules load as ``agent.protocols.*`` and ``ttrpc.protocols.*``.  ``--check``
regenerates into a temporary directory and exits 1 when a committed module
differs, which is what the staleness test and CI use.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"

# (proto file relative to protos/, python package it lands in)
TARGETS: list[tuple[str, str]] = [
    ("types.proto", "agent.protocols"),
    ("oci.proto", "agent.protocols"),
    ("csi.proto", "agent.protocols"),
    ("health.proto", "agent.protocols"),
    ("agent.proto", "agent.protocols"),
    ("google/rpc/status.proto", "ttrpc.protocols"),
    ("ttrpc.proto", "ttrpc.protocols"),
]


def _module_package() -> dict[str, str]:
    """Map generated module name (``types_pb2``) to the package it lives in."""
    return {Path(p).stem + "_pb2": pkg for p, pkg in TARGETS}


def _rewrite_imports(source: str, where: dict[str, str]) -> str:
    def plain(match: re.Match[str]) -> str:
        module, alias = match.group(1), match.group(2)
        if module not in where:
            return match.group(0)
        return f"from {where[module]} import {module} as {alias}"

    def dotted(match: re.Match[str]) -> str:
        prefix, module, alias = match.group(1), match.group(2), match.group(3)
        if module not in where or prefix.startswith("google.protobuf"):
            return match.group(0)
        return f"from {where[module]} import {module} as {alias}"

    source = re.sub(r"^import (\w+_pb2) as (\w+)$", plain, source, flags=re.M)
    return re.sub(r"^from ([\w.]+) import (\w+_pb2) as (\w+)$", dotted, source, flags=re.M)


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every target and write the rewritten modules under out_root."""
    import importlib.resources

    from grpc_tools import protoc  # dev-only dependency

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    where = _module_package()
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp}"]
        args += [str(PROTOS / p) for p, _ in TARGETS]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for proto, pkg in TARGETS:
            produced = Path(tmp) / proto.replace(".proto", "_pb2.py")
            dest = out_root / pkg.replace(".", "/") / produced.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_rewrite_imports(produced.read_text(), where))
            written.append(dest)
    return written


def main(argv: list[str]) -> int:
    if "--check" not in argv:
        for path in generate(ROOT):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(Path(tmp)):
            committed = ROOT / fresh.relative_to(tmp)
            if not committed.exists() or committed.read_text() != fresh.read_text():
                stale.append(str(committed.relative_to(ROOT)))
    for name in stale:
        print(f"stale: {name} (run python3 protos/generate.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
