"""Write the JSON files the runtime reads (config.json, process.json, resources.json).

Why atomic: the runtime may be started right after we write, and a crash in between
must never leave a half-written config behind for a later retry to trip over. The files
carry the container's environment (often secrets), so they are private to root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike[str], doc: Any, *, mode: int = 0o600) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically (temp file, fsync, rename)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    data = json.dumps(doc, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def write_config(bundle: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Write ``<bundle>/config.json``; returns its path."""
    return write_json(Path(bundle) / "config.json", config)
