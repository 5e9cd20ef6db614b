"""The service modules of this issue load nothing heavy into the agent.

They are imported on the first network or guest call and then stay: pyroute2
(and what it drags in) belongs to the worker process only, and ``dataclasses``
(which pulls in ``inspect``, ~1 MB) is kept off the agent side.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pyroute2", "asyncio", "sqlite3", "ssl", "multiprocessing", "dataclasses", "importlib.metadata")


def test_service_modules_import_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import agent.service.network, agent.service.guest, agent.uevents\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
