"""PID-1 duties, exercised for real as PID 1 of fresh namespaces."""

from __future__ import annotations

import errno
import json
import os
import pty
import select
import socket
import subprocess
import sys

import pytest

from agent import init

from .nsrun import guest_json, python_env, require_namespaces, run_in_guest

# Boot a scratch "guest root": a tmpfs stands in for devtmpfs at dev/ (mounting the
# real devtmpfs would share the host's /dev, and link_ptmx writes there).
BOOT = """
    import json, os, sys
    from agent import init

    root = sys.argv[1]
    assert os.getpid() == 1
    init.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
    os.makedirs(root + "/dev")
    init.mount("tmpfs", root + "/dev", "tmpfs", 0, "mode=0755")
    os.mknod(root + "/dev/ptmx", 0o20666, os.makedev(5, 2))
    with open(root + "/dev/keep", "w"):
        pass

    def boot():
        return {
            "proc": init.mount_proc(root),
            "sys": init.mount_sysfs(root),
            "pts": init.mount_devpts(root),
            "shm": init.mount_shm(root),
            "run": init.mount_run(root),
            "cgroups": init.mount_cgroups(root, v2=False),
            "ptmx": init.link_ptmx(root),
            "hostname": init.set_hostname(root=root),
            "lo": init.loopback_up(),
        }

    os.makedirs(root + "/etc")
    with open(root + "/etc/hostname", "w") as f:
        f.write("kata-guest-test extra words\\n")
    first = boot()
    second = boot()
    init.set_child_subreaper()
    with open(root + "/sys/class/net/lo/flags") as f:
        sysfs_lo_flags = int(f.read(), 16)
    with open(root + "/proc/sys/kernel/hostname") as f:
        proc_hostname = f.read().strip()
    print(json.dumps({
        "first": first,
        "second": second,
        "mounts": [e for e in init.mountinfo() if e[0].startswith(root)],
        "lo_flags": init.interface_flags("lo"),
        "sysfs_lo_flags": sysfs_lo_flags,
        "proc_hostname": proc_hostname,
        "pids": sorted(int(p) for p in os.listdir(root + "/proc") if p.isdigit()),
        "ptmx_link": os.readlink(root + "/dev/ptmx") if os.path.islink(root + "/dev/ptmx") else None,
        "subreaper": init.is_child_subreaper(),
        "controllers": init.cgroup_controllers(root + "/proc/cgroups"),
    }))
"""


def _existing_v1_hierarchies() -> set[str]:
    """Enabled controllers already bound to a v1 hierarchy on the host (mountable in a cgroupns)."""
    names = set()
    with open("/proc/cgroups") as f:
        for line in f:
            fields = line.split()
            if not line.startswith("#") and fields[3] == "1" and fields[1] != "0":
                names.add(fields[0])
    return names


def test_pid1_boot_in_scratch_root(tmp_path):
    host_name = socket.gethostname()
    out = guest_json(BOOT, str(tmp_path))
    root = str(tmp_path)
    mounts = {point[len(root) :]: (fstype, opts) for point, fstype, _, opts in out["mounts"]}

    assert mounts["/proc"][0] == "proc"
    assert mounts["/sys"][0] == "sysfs"
    assert mounts["/dev/pts"][0] == "devpts"
    assert "ptmxmode=666" in mounts["/dev/pts"][1].split(",")
    assert mounts["/dev/shm"][0] == "tmpfs"
    assert mounts["/run"][0] == "tmpfs"
    assert mounts["/sys/fs/cgroup"][0] == "tmpfs"
    mounted_v1 = {p.rsplit("/", 1)[1] for p, (t, _) in mounts.items() if t == "cgroup"}
    assert mounted_v1 <= set(out["controllers"])
    assert _existing_v1_hierarchies() & set(out["controllers"]) <= mounted_v1
    for name in mounted_v1:
        assert name in mounts[f"/sys/fs/cgroup/{name}"][1].split(",")

    # The fresh proc shows only this PID namespace: our script is its PID 1, alone.
    assert out["pids"] == [1]
    # /dev/ptmx opens the private devpts: a symlink, or (over the shared devtmpfs
    # node, which must never be replaced) a bind mount of pts/ptmx.
    assert out["ptmx_link"] == "pts/ptmx" or mounts.get("/dev/ptmx", ("",))[0] == "devpts"
    assert out["lo_flags"] & init.IFF_UP
    assert out["sysfs_lo_flags"] & init.IFF_UP  # seen through the namespace's own sysfs
    assert out["first"]["hostname"] == out["proc_hostname"] == "kata-guest-test"
    assert out["subreaper"] is True

    first, second = out["first"], out["second"]
    assert all(first[k] is True for k in ("proc", "sys", "pts", "shm", "run", "ptmx", "lo"))
    assert f"{root}/sys/fs/cgroup" in first["cgroups"]
    # Idempotent: the second pass finds everything done and changes nothing.
    assert not any(second[k] for k in ("proc", "sys", "pts", "shm", "run", "ptmx", "lo", "cgroups"))
    assert sum(1 for p, _, _, _ in out["mounts"] if p == f"{root}/proc") == 1

    assert socket.gethostname() == host_name  # the UTS namespace kept the host's name
    assert os.listdir(tmp_path) == []  # every mount vanished with the namespace


def test_devtmpfs_mount_shows_kernel_devices(tmp_path):
    out = guest_json(
        """
        import json, os, stat, sys
        from agent import init
        root = sys.argv[1]
        init.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
        first, second = init.mount_devtmpfs(root), init.mount_devtmpfs(root)
        print(json.dumps({
            "first": first, "second": second,
            "fstype": init.mounted_fstype(root + "/dev"),
            "null_is_chr": stat.S_ISCHR(os.stat(root + "/dev/null").st_mode),
        }))
        """,
        str(tmp_path),
    )
    assert out == {"first": True, "second": False, "fstype": "devtmpfs", "null_is_chr": True}


def test_cgroup_v2_mount(tmp_path):
    out = guest_json(
        """
        import json, os, sys
        from agent import init
        root = sys.argv[1]
        init.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
        first = init.mount_cgroups(root, v2=True)
        second = init.mount_cgroups(root, v2=True)
        base = root + "/sys/fs/cgroup"
        print(json.dumps({
            "first": first, "second": second,
            "fstype": init.mounted_fstype(base),
            "has_procs": os.path.exists(base + "/cgroup.procs"),
        }))
        """,
        str(tmp_path),
    )
    base = f"{tmp_path}/sys/fs/cgroup"
    assert out == {"first": [base], "second": [], "fstype": "cgroup2", "has_procs": True}


def test_mount_base_on_the_real_root_is_idempotent():
    # Inside a private mount namespace the real root is safe to boot: existing mounts
    # of the right type are kept, missing ones are added only in the namespace.
    out = guest_json(
        """
        import json
        from agent import init
        first = init.mount_base("/")
        second = init.mount_base("/")
        kinds = {p: init.mounted_fstype("/" + p) for p in ("proc", "sys", "dev", "dev/pts", "dev/shm", "run")}
        print(json.dumps({"first": first, "second": second, "kinds": kinds}))
        """
    )
    assert out["second"] == []
    assert "proc" not in out["first"]  # unshare --mount-proc already did it
    assert out["kinds"] == {
        "proc": "proc",
        "sys": "sysfs",
        "dev": "devtmpfs",
        "dev/pts": "devpts",
        "dev/shm": "tmpfs",
        "run": "tmpfs",
    }


def test_power_off_ends_the_namespace():
    # Guarded twice: power_off() in the host's PID namespace would stop this machine.
    require_namespaces()
    host_pidns = os.stat("/proc/self/ns/pid").st_ino
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen(
            [
                "unshare",
                "--fork",
                "--pid",
                "--mount",
                "--mount-proc",
                sys.executable,
                "-c",
                """
import os, subprocess, sys
import pytest

from agent import init
if os.getpid() != 1 or os.stat("/proc/self/ns/pid").st_ino == int(sys.argv[1]):
    sys.exit(3)
# A long-lived process holding the pipe: it dies only if the namespace ends.
subprocess.Popen(["sleep", "600"], pass_fds=(int(sys.argv[2]),))
print("before", flush=True)
init.power_off()
print("after", flush=True)
""",
                str(host_pidns),
                str(wfd),
            ],
            pass_fds=(wfd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        os.close(wfd)
        wfd = -1
        out, err = proc.communicate(timeout=60)
        assert out.strip() == "before", err
        assert proc.returncode != 0 and proc.returncode != 3
        # EOF means every holder of the write end, the sleeper included, is gone.
        ready, _, _ = select.select([rfd], [], [], 30)
        assert ready and os.read(rfd, 1) == b""
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


CHILD = """
import json, os, sys, time
import pytest

from agent import init
"""


def test_child_subreaper_adopts_orphans():
    script = (
        CHILD
        + """
init.set_child_subreaper()
assert init.is_child_subreaper()
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    mid = os.getpid()
    if os.fork() == 0:  # the grandchild: wait until orphaned, then report its parent
        deadline = time.monotonic() + 30
        while os.getppid() == mid and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(w, str(os.getppid()).encode())
        os._exit(0)
    os._exit(0)
os.close(w)
os.waitpid(middle, 0)
adopter = int(os.read(r, 64))
pid, status = os.waitpid(-1, 0)  # the orphan is now our child to reap
ok = os.waitstatus_to_exitcode(status) == 0
print(json.dumps({"me": os.getpid(), "adopter": adopter, "reaped_ok": ok}))
"""
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["adopter"] == out["me"]
    assert out["reaped_ok"]


def test_session_takes_the_tty_on_stdin():
    script = (
        CHILD
        + """
took = init.setup_session(0)
fd = os.open("/dev/tty", os.O_RDWR)  # only works with a controlling terminal
os.close(fd)
print(json.dumps({"took": took, "leader": os.getsid(0) == os.getpid(),
                  "foreground": os.tcgetpgrp(0) == os.getpgrp(), "again": init.setup_session(0)}))
"""
    )
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"took": True, "leader": True, "foreground": True, "again": True}


def test_session_without_a_tty():
    script = (
        CHILD + 'print(json.dumps({"took": init.setup_session(0), "leader": os.getsid(0) == os.getpid()}))'
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"took": False, "leader": True}


def test_hostname_defaults_to_localhost(tmp_path):
    assert init.read_hostname(str(tmp_path)) == "localhost"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("\n")
    assert init.read_hostname(str(tmp_path)) == "localhost"
    (tmp_path / "etc" / "hostname").write_text("  guest-1  \n")
    assert init.read_hostname(str(tmp_path)) == "guest-1"


def test_mountinfo_unescapes_paths(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(
        "36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
        "37 35 0:5 / /proc rw - proc proc rw\n"
    )
    assert init.mountinfo(str(table)) == [
        ("/mnt with space", "ext3", "/dev/root", "rw,errors=continue"),
        ("/proc", "proc", "proc", "rw"),
    ]


def test_loopback_up_in_a_fresh_netns():
    proc = run_in_guest(
        """
        from agent import init
        before = init.interface_flags("lo") & init.IFF_UP
        assert init.loopback_up() is True and init.loopback_up() is False
        assert not before and init.interface_flags("lo") & init.IFF_UP
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_power_off_refuses_unless_pid1():
    with pytest.raises(OSError) as err:
        init.power_off()
    assert err.value.errno == errno.EPERM
