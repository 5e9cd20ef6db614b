"""What the spec asks for is really enforced inside the container (the runtime's job, our spec).

Through the agent, with crun and runc: a capability left out is missing (and
what it guards fails), a masked path reads empty, a readonly path refuses
writes while a writable one accepts them, rlimits, users and groups apply,
a seccomp rule denies its syscall, a namespaced sysctl is set, the guest's
hooks from ``guest_hook_path`` run (regular executables only) and so does a
hook from the spec. Also GetDiagnosticData reads the termination log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.protocols import agent_pb2, oci_pb2

from .pod import SHARED, Pod, add_rootfs, container_spec, process, share_storage

CAP_CHOWN, CAP_SYS_ADMIN = 0, 21
HOOK = """#!/bin/sh
cat > {out}/"$1-$(basename "$0").json"
"""
CHECKS = (
    "grep CapEff /proc/self/status; "
    "hostname other 2>/dev/null; echo hostname-rc=$?; "
    "echo secret=[$(cat /etc/secret)]; "
    "touch /data/x 2>/dev/null; echo data-rc=$?; touch /tmp/x; echo tmp-rc=$?; "
    "echo init-nofile=$(grep 'Max open files' /proc/1/limits | tr -s ' ' | cut -d' ' -f4); "
    "mkdir /tmp/d 2>/dev/null; echo mkdir-rc=$?; "
    "echo shmmax=$(cat /proc/sys/kernel/shmmax)"
)


def _hooks(tmp_path: Path, out: Path) -> Path:
    hooks = tmp_path / "hooks"
    for kind in ("prestart", "poststop"):
        d = hooks / kind
        d.mkdir(parents=True)
        script = d / "record.sh"
        script.write_text(HOOK.format(out=out))
        script.chmod(0o755)
    (hooks / "prestart" / "not-executable.sh").write_text(HOOK.format(out=out))
    os.symlink("record.sh", hooks / "prestart" / "link")
    return hooks


def test_spec_is_enforced(pod: Pod, share: Path, tmp_path: Path) -> None:
    out = tmp_path / "hook-out"
    out.mkdir()
    rootfs = add_rootfs(share, "enf")
    (rootfs / "etc" / "secret").write_text("s3cret")
    (rootfs / "data").mkdir()
    (share / "enf" / "termination-log").write_text("x" * 5000 + "the end")
    pod.call(
        "CreateSandbox",
        agent_pb2.CreateSandboxRequest(
            hostname="enf", storages=[share_storage(share)], guest_hook_path=str(_hooks(tmp_path, out))
        ),
    )
    spec = container_spec(
        "enf",
        ["sh", "-c", "echo up; exec sleep 1000"],
        hostname="enf",
        mounts=[
            oci_pb2.Mount(destination="/data", type="tmpfs", source="tmpfs", options=["nosuid"]),
            oci_pb2.Mount(
                destination="/dev/termination-log",
                type="bind",
                source=f"{SHARED}/enf/termination-log",
                options=["rbind", "rw"],
            ),
        ],
    )
    spec.Process.Rlimits[0].CopyFrom(oci_pb2.POSIXRlimit(Type="RLIMIT_NOFILE", Hard=777, Soft=777))
    spec.Linux.MaskedPaths.append("/etc/secret")
    spec.Linux.ReadonlyPaths.append("/data")
    spec.Linux.Sysctl["kernel.shmmax"] = "123456789"
    spec.Linux.Seccomp.CopyFrom(
        oci_pb2.LinuxSeccomp(
            DefaultAction="SCMP_ACT_ALLOW",
            Syscalls=[oci_pb2.LinuxSyscall(Names=["mkdir", "mkdirat"], Action="SCMP_ACT_ERRNO", errnoret=1)],
        )
    )
    spec.Hooks.Poststart.append(
        oci_pb2.Hook(Path="/bin/sh", Args=["sh", "-c", f"cat > {out}/spec-poststart.json"])
    )
    pod.create("enf", spec)
    # Only the regular executable ran (runc 1.1 also runs poststart hooks at create).
    assert {p.name for p in out.iterdir()} - {"spec-poststart.json"} == {"prestart-record.sh.json"}
    assert json.loads((out / "prestart-record.sh.json").read_text())["id"] == "enf"
    pod.start("enf")
    assert pod.read_until("enf", "enf", b"up\n") == b"up\n"
    assert json.loads((out / "spec-poststart.json").read_text())["id"] == "enf"

    status, text, err = pod.run("enf", "checks", ["sh", "-c", CHECKS])
    assert status == 0, err
    lines = dict(
        line.split("=", 1) if "=" in line else line.split(":", 1) for line in text.decode().splitlines()
    )
    cap_eff = int(lines["CapEff"].strip(), 16)
    assert cap_eff & (1 << CAP_CHOWN) and not cap_eff & (1 << CAP_SYS_ADMIN)
    assert lines["hostname-rc"] != "0"  # sethostname needs CAP_SYS_ADMIN
    assert lines["secret"] == "[]"
    assert (lines["data-rc"], lines["tmp-rc"]) != ("0", "0") and lines["tmp-rc"] == "0"
    assert lines["init-nofile"] == "777"  # the init's rlimits (an exec has its own)
    assert lines["mkdir-rc"] != "0"
    assert lines["shmmax"] == "123456789"

    user = process(["id"])
    user.User.CopyFrom(oci_pb2.User(UID=65534, GID=65534, AdditionalGids=[4242]))
    pod.call("ExecProcess", agent_pb2.ExecProcessRequest(container_id="enf", exec_id="user", process=user))
    ident = pod.read_all("enf", "user").decode()
    assert pod.wait("enf", "user") == 0
    assert "uid=65534" in ident and "gid=65534" in ident and "4242" in ident

    diag = pod.call(
        "GetDiagnosticData",
        agent_pb2.GetDiagnosticDataRequest(container_id="enf", log_type="termination-log"),
        agent_pb2.GetDiagnosticDataResponse,
    )
    assert len(diag.data) == 4096 and diag.data.endswith("the end")

    pod.signal("enf", "", 9)
    pod.wait("enf", "enf")
    pod.remove("enf")
    assert json.loads((out / "poststop-record.sh.json").read_text())["id"] == "enf"
    assert not (out / "prestart-link.json").exists()
