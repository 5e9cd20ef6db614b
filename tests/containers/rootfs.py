"""Build a minimal container root filesystem from Debian's busybox-static.

Layout: /bin/busybox plus one symlink per applet, /etc/passwd and /etc/group with root
and nobody, and the empty mount points a runtime expects (/proc /sys /dev /tmp).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = "/bin/busybox"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_path() -> str:
    """The static busybox binary; fails loudly when the apt package is missing."""
    if not os.access(BUSYBOX, os.X_OK):
        raise RuntimeError(f"{BUSYBOX} not found: install Debian's busybox-static")
    return BUSYBOX


def build_rootfs(dest: str | os.PathLike[str]) -> Path:
    """Create the rootfs at ``dest`` (which must not exist yet or be empty); returns it."""
    root = Path(dest)
    busybox = busybox_path()
    for d in ("bin", "etc", "proc", "sys", "dev", "root", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root
