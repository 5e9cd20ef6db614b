"""GetIPTables / SetIPTables: ``iptables-save`` and ``iptables-restore --wait``.

Plain subprocess calls, run from the network worker so the agent never waits
on a child outside its reaper. The rule text is bytes on the wire; inside the
worker's JSON channel it travels as latin-1 text, a lossless byte<->str map.
"""

from __future__ import annotations

import os

from agent.errors import FailedPrecondition, Internal

SEARCH_PATH = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/bin", "/bin", os.environ.get("PATH", "")])
TIMEOUT = 60.0


def to_wire(data: bytes) -> str:
    return data.decode("latin-1")


def from_wire(text: str) -> bytes:
    return text.encode("latin-1")


def _tool(name: str) -> str:
    import shutil  # here, not at the top: the agent imports this module for to_wire/from_wire only

    path = shutil.which(name, path=SEARCH_PATH)
    if path is None:
        raise FailedPrecondition(f"{name} not found in {SEARCH_PATH}")
    return path


def _run(argv: list[str], stdin: bytes | None) -> bytes:
    import subprocess

    try:
        proc = subprocess.run(
            argv,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Internal(f"{os.path.basename(argv[0])} timed out after {TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise Internal(f"{os.path.basename(argv[0])} failed (exit {proc.returncode}): {err}")
    return proc.stdout


def save(is_ipv6: bool) -> bytes:
    """The current rules in iptables-save format."""
    return _run([_tool("ip6tables-save" if is_ipv6 else "iptables-save")], None)


def restore(is_ipv6: bool, data: bytes) -> bytes:
    """Atomically replace the rules; returns whatever the tool printed."""
    return _run([_tool("ip6tables-restore" if is_ipv6 else "iptables-restore"), "--wait"], data)
