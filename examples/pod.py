"""Drive a pod's life through ``kata-agent-ctl``, in the order the Kata runtime calls.

Usage: python3 examples/pod.py ADDRESS [BUNDLE_ROOTFS]

Each step is printed as the command a person would type, then the agent's answer.
"""

from __future__ import annotations

import json
import subprocess
import sys


def ctl(addr: str, method: str, request: dict | None = None, check: bool = True) -> dict | None:
    args = ["kata-agent-ctl", "--addr", addr, "call", method, json.dumps(request or {})]
    print(f"$ kata-agent-ctl call {method} '{json.dumps(request or {})}'")
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    text = (out.stdout or out.stderr).strip()
    print("  " + text.replace("\n", "\n  "))
    if out.returncode != 0:
        if check:
            raise SystemExit(f"step {method} failed")
        return None
    return json.loads(out.stdout or "{}")


def main() -> int:
    addr = sys.argv[1]
    ctl(addr, "GetGuestDetails", {"mem_block_size": True, "mem_hotplug_probe": True}, check=False)
    ctl(addr, "CreateSandbox", {"hostname": "demo-pod", "sandbox_id": "demo"}, check=False)
    ctl(addr, "DestroySandbox", {}, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
