"""Agent policy (upstream SetPolicy): Rego consulted before every AgentService call.

The input shape and the engine are tested in-process; enforcement with a real
agent started with ``KATA_AGENT_POLICY_FILE`` (in the sandbox), and once with
real containers (crun, as the e2e tests run them) for what only a container
shows: blanked log reads and ExecProcess refused per command.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent import policy
from agent.protocols import agent_pb2, oci_pb2
from tests.hardening import fuzzlib
from tests.hardening.sandbox import REPO, SandboxedAgent, available
from ttrpc.status import Code, RPCError

SHARED = "/run/kata-containers/shared/containers"
RULES = policy.rule_names()


def rego(*lines: str, allow_rest: bool = True, skip: tuple[str, ...] = ()) -> str:
    """A policy: ``lines`` plus ``default <Rule> := true`` for every rule not named in ``skip``."""
    body = ["package agent_policy", "", *lines]
    if allow_rest:
        body += [f"default {r} := true" for r in RULES if r not in skip and r != policy.ALLOW_FAILURES_RULE]
    return "\n".join(body) + "\n"


ALLOW_ALL = rego()
BLOCK_COPYFILE = rego("default CopyFileRequest := false", skip=("CopyFileRequest",))
BLOCK_SH = rego(
    "default ExecProcessRequest := false",
    'ExecProcessRequest if { input.process.Args[0] != "/bin/sh" }',
    skip=("ExecProcessRequest",),
)


def start(tmp_path: Path, text: str | None, **kw: object) -> SandboxedAgent:
    if not available():
        pytest.skip("needs root and unshare(1) for the sandbox")
    env = {}
    if text is not None:
        path = tmp_path / "policy.rego"
        path.write_text(text)
        env["KATA_AGENT_POLICY_FILE"] = str(path)
    return SandboxedAgent(tmp_path, env=env, module="tests.hardening.policy_agent").start(**kw)  # type: ignore[arg-type]


def codes(agent: SandboxedAgent, *requests: tuple[str, object]) -> list[tuple[int, str]]:
    methods = {m.name: m for m in fuzzlib.agent_methods()}
    with fuzzlib.WireClient(agent.address) as client:
        for method, request in requests:
            client.send(methods[method], request.SerializeToString(), 10)  # type: ignore[attr-defined]
        replies = sorted(client.drain(grace=30))  # by stream id: in the order sent
    return [(r.code, r.message) for r in replies]


# --- the input document -----------------------------------------------------------------------


def test_input_is_upstream_serde_json() -> None:
    req = agent_pb2.CreateContainerRequest(container_id="c1")
    req.OCI.Mounts.add(destination="/x", type="bind", options=["rbind"])
    req.OCI.Linux.Seccomp.Syscalls.add(Names=["kexec_load"], errnoret=1)
    req.OCI.Linux.Seccomp.Syscalls.add(Names=["read"])
    req.OCI.Annotations["a"] = "b"
    doc = policy.request_input(req)
    assert doc["container_id"] == "c1" and doc["exec_id"] == ""  # every field, defaults too
    assert doc["string_user"] is None  # an unset message is null
    assert doc["OCI"]["Mounts"][0] == {
        "destination": "/x",
        "source": "",
        "type_": "bind",
        "options": ["rbind"],
    }
    assert doc["OCI"]["Annotations"] == {"a": "b"}
    first, second = doc["OCI"]["Linux"]["Seccomp"]["Syscalls"]
    assert first["ErrnoRet"] == {"errnoret": 1} and second["ErrnoRet"] is None  # a oneof
    json.dumps(doc)


def test_input_numbers_enums_bytes_and_optionals() -> None:
    iface = agent_pb2.UpdateInterfaceRequest()
    iface.interface.IPAddresses.add(family=1, address="::1")
    iface.interface.mtu = 2**64 - 1
    assert policy.request_input(iface)["interface"]["IPAddresses"][0]["family"] == 1
    assert policy.request_input(iface)["interface"]["mtu"] == 2**64 - 1
    write = policy.request_input(agent_pb2.WriteStreamRequest(data=b"\x00\xff"))
    assert base64.b64decode(write["data"]) == b"\x00\xff"
    memcg = policy.request_input(agent_pb2.MemAgentMemcgConfig(swap=True))
    assert memcg["swap"] is True and memcg["disabled"] is None  # proto3 optional: null when unset


def test_copy_file_input_has_metadata_not_data() -> None:
    regular = policy.request_input(agent_pb2.CopyFileRequest(path="/p", file_mode=0o100644, data=b"x" * 100))
    assert "data" not in regular and regular["file_type"] == "Regular" and regular["symlink_target"] is None
    link = policy.request_input(agent_pb2.CopyFileRequest(path="/l", file_mode=0o120777, data=b"..2024"))
    assert link["file_type"] == "Symlink" and link["symlink_target"] == link["symlink_src"] == "..2024"
    with pytest.raises(RPCError) as err:
        policy.request_input(agent_pb2.CopyFileRequest(path="/l", file_mode=0o120777, data=b"\xff"))
    assert err.value.code == Code.INVALID_ARGUMENT


# --- the engine --------------------------------------------------------------------------------


def test_decisions_true_false_undefined_and_errors() -> None:
    p = policy.Policy(
        rego(
            "default CopyFileRequest := false",
            f'CopyFileRequest if {{ startswith(input.path, "{SHARED}/") }}',
            "StatsContainerRequest := 1 / 0",
            'PauseContainerRequest := "yes"',
            allow_rest=False,
        )
    )
    assert p.decide("CopyFileRequest", {"path": f"{SHARED}/a"}).allowed
    assert not p.decide("CopyFileRequest", {"path": "/etc/passwd"}).allowed
    assert not p.decide("ExecProcessRequest", {}).allowed  # undefined refuses
    assert not p.decide("StatsContainerRequest", {}).allowed  # an evaluation error refuses
    assert not p.decide("PauseContainerRequest", {}).allowed  # only true allows
    assert not p.allow_failures


def test_allow_requests_failing_policy() -> None:
    p = policy.Policy(rego("AllowRequestsFailingPolicy := true", allow_rest=False))
    assert p.allow_failures
    assert p.decide("ExecProcessRequest", {}).allowed


def test_policy_state_updates_through_ops() -> None:
    p = policy.Policy(
        rego(
            "default CreateSandboxRequest := false",
            'CreateSandboxRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/sandbox", '
            '"value": input.hostname}]} if { not data.pstate.sandbox }',
            "default CreateContainerRequest := false",
            "CreateContainerRequest if { input.OCI.Hostname == data.pstate.sandbox }",
            allow_rest=False,
        )
    )
    assert p.decide("CreateSandboxRequest", {"hostname": "pod"}).allowed
    assert p.state == {"pstate": {"sandbox": "pod"}}
    assert not p.decide("CreateSandboxRequest", {"hostname": "other"}).allowed  # once only
    assert p.decide("CreateContainerRequest", {"OCI": {"Hostname": "pod"}}).allowed
    assert not p.decide("CreateContainerRequest", {"OCI": {"Hostname": "evil"}}).allowed


def test_json_patch_operations() -> None:
    doc = {"pstate": {"list": [1, 2]}}
    out = policy.apply_patch(
        doc,
        [
            {"op": "add", "path": "/pstate/list/-", "value": 3},
            {"op": "replace", "path": "/pstate/list/0", "value": 0},
            {"op": "add", "path": "/pstate/a~1b", "value": {"x": 1}},
            {"op": "remove", "path": "/pstate/list/1"},
            {"op": "test", "path": "/pstate/a~1b/x", "value": 1},
        ],
    )
    assert out == {"pstate": {"list": [0, 3], "a/b": {"x": 1}}} and doc == {"pstate": {"list": [1, 2]}}
    with pytest.raises(ValueError):
        policy.apply_patch(doc, [{"op": "test", "path": "/pstate/list/0", "value": 9}])


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("package other\ndefault CopyFileRequest := true\n", "package agent_policy"),
        ("package agent_policy\nthis is not rego\n", "does not compile"),
        ("package agent_policy\nCopyFileRequest := {\n", "does not compile"),
    ],
)
def test_bad_documents_are_refused(text: str, why: str) -> None:
    with pytest.raises(policy.PolicyError, match=why):
        policy.Policy(text)


# --- a real agent --------------------------------------------------------------------------------


def test_allow_all(tmp_path: Path) -> None:
    with start(tmp_path, ALLOW_ALL) as agent:
        got = codes(
            agent,
            ("GetGuestDetails", agent_pb2.GuestDetailsRequest(mem_block_size=True)),
            (
                "CopyFile",
                agent_pb2.CopyFileRequest(path=f"{SHARED}/f", file_mode=0o100644, file_size=2, data=b"hi"),
            ),
            ("ListInterfaces", agent_pb2.ListInterfacesRequest()),
            ("WaitProcess", agent_pb2.WaitProcessRequest(container_id="nope")),
        )
        assert [c for c, _ in got] == [Code.OK, Code.OK, Code.OK, Code.NOT_FOUND], got
        assert Path(f"/proc/{agent.pid}/root{SHARED}/f").read_bytes() == b"hi"


def test_policy_blocks_copy_file(tmp_path: Path) -> None:
    with start(tmp_path, BLOCK_COPYFILE) as agent:
        got = codes(
            agent,
            (
                "CopyFile",
                agent_pb2.CopyFileRequest(path=f"{SHARED}/f", file_mode=0o100644, file_size=2, data=b"hi"),
            ),
            ("GetGuestDetails", agent_pb2.GuestDetailsRequest()),
        )
        assert got[0] == (Code.PERMISSION_DENIED, "CopyFileRequest is blocked by policy"), got
        assert got[1][0] == Code.OK
        assert not Path(f"/proc/{agent.pid}/root{SHARED}/f").exists()


def test_policy_refuses_exec_of_a_command_before_the_handler_runs(tmp_path: Path) -> None:
    """No container exists, so a call that reached its handler answers NOT_FOUND."""
    with start(tmp_path, BLOCK_SH) as agent:
        sh = agent_pb2.ExecProcessRequest(
            container_id="c1", exec_id="e1", process=oci_pb2.Process(Args=["/bin/sh"])
        )
        ls = agent_pb2.ExecProcessRequest(
            container_id="c1", exec_id="e2", process=oci_pb2.Process(Args=["/bin/ls"])
        )
        got = codes(agent, ("ExecProcess", sh), ("ExecProcess", ls))
        assert [c for c, _ in got] == [Code.PERMISSION_DENIED, Code.NOT_FOUND], got
        assert got[0][1].startswith("ExecProcessRequest is blocked by policy")


def test_refused_reads_are_not_errors(tmp_path: Path) -> None:
    """ReadStdout/ReadStderr are never refused: the handler runs (here: no such container)."""
    with start(tmp_path, rego("default ReadStreamRequest := false", skip=("ReadStreamRequest",))) as agent:
        read = agent_pb2.ReadStreamRequest(container_id="c1", exec_id="", len=1024)
        got = codes(agent, ("ReadStdout", read), ("ReadStderr", read))
        assert [c for c, _ in got] == [Code.NOT_FOUND, Code.NOT_FOUND], got


def test_health_is_outside_the_policy(tmp_path: Path) -> None:
    with start(tmp_path, "package agent_policy\n") as agent:  # refuses every AgentService call
        fuzzlib.raw_check(agent.address)
        got = codes(agent, ("GetGuestDetails", agent_pb2.GuestDetailsRequest()))
        assert got[0][0] == Code.PERMISSION_DENIED


def test_set_policy_replaces_the_policy_when_allowed(tmp_path: Path) -> None:
    exec_sh = agent_pb2.ExecProcessRequest(container_id="c1", process=oci_pb2.Process(Args=["/bin/sh"]))
    locked = rego("default SetPolicyRequest := false", skip=("SetPolicyRequest",))
    with start(tmp_path, BLOCK_SH) as agent:
        got = codes(
            agent,
            ("ExecProcess", exec_sh),
            ("SetPolicy", agent_pb2.SetPolicyRequest(policy="package agent_policy\nnot rego at all\n")),
            ("ExecProcess", exec_sh),
            ("SetPolicy", agent_pb2.SetPolicyRequest(policy=locked)),
            ("ExecProcess", exec_sh),
            ("SetPolicy", agent_pb2.SetPolicyRequest(policy=ALLOW_ALL)),
        )
        assert [c for c, _ in got] == [
            Code.PERMISSION_DENIED,  # sh is blocked
            Code.INVALID_ARGUMENT,  # a document that does not compile...
            Code.PERMISSION_DENIED,  # ...leaves the old policy in force
            Code.OK,  # replaced: sh allowed, SetPolicy not
            Code.NOT_FOUND,  # exec reaches its handler now
            Code.PERMISSION_DENIED,  # the new policy refuses to be replaced
        ], got
        assert got[-1][1] == "SetPolicyRequest is blocked by policy"


def test_set_policy_without_a_policy_starts_enforcing(tmp_path: Path) -> None:
    with start(tmp_path, None) as agent:
        assert "librego" not in Path(f"/proc/{agent.pid}/maps").read_text()
        got = codes(
            agent,
            ("SetPolicy", agent_pb2.SetPolicyRequest(policy=BLOCK_COPYFILE)),
            ("CopyFile", agent_pb2.CopyFileRequest(path=f"{SHARED}/f", file_mode=0o100644)),
        )
        assert [c for c, _ in got] == [Code.OK, Code.PERMISSION_DENIED], got


def test_a_bad_policy_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not compile") as err:
        start(tmp_path, "package agent_policy\nnot rego\n", timeout=15)
    assert "policy.rego" in str(err.value)


def test_policy_engine_is_loaded_only_with_a_policy(tmp_path: Path) -> None:
    """Footprint: without a policy neither agent.policy nor regopy is imported (nor the library mapped)."""
    code = (
        "import sys\n"
        "from agent.config import load_config\n"
        "from agent.app import Agent\n"
        "Agent(load_config(['--server-addr', 'unix:///nonexistent/a.sock'])[0])\n"
        "assert not {'agent.policy', 'regopy'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    with start(tmp_path, ALLOW_ALL) as agent:
        assert "librego" in Path(f"/proc/{agent.pid}/maps").read_text()


def test_evaluation_does_not_leak() -> None:
    """rego-cpp's allocator and libstdc++'s must not mix (agent.policy._share_libstdcxx):
    with protobuf loaded first, as in the agent, each query used to leak ~1 KB."""
    code = (
        "from agent.protocols import agent_pb2\n"
        "from agent.policy import Policy, request_input\n"
        "def pss():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('Pss:'))\n"
        "p = Policy('package agent_policy\\ndefault GuestDetailsRequest := true\\n')\n"
        "req = request_input(agent_pb2.GuestDetailsRequest(mem_block_size=True))\n"
        "for _ in range(500): p.decide('GuestDetailsRequest', req)\n"
        "base = pss()\n"
        "for _ in range(5000): p.decide('GuestDetailsRequest', req)\n"
        "print(pss() - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 1024, f"{out.stdout} kB for 5 000 decisions"


def test_set_policy_fuzz(tmp_path: Path) -> None:
    """Mutated policy documents: any answer but UNKNOWN, and the agent keeps serving."""
    src = fuzzlib.RandomSource(3)
    texts = [ALLOW_ALL.encode(), BLOCK_SH.encode(), BLOCK_COPYFILE.encode()]
    methods = {m.name: m for m in fuzzlib.agent_methods()}
    with start(tmp_path, ALLOW_ALL) as agent, fuzzlib.WireClient(agent.address) as client:
        tally = fuzzlib.Tally()
        for _ in range(60):
            text = fuzzlib.mutate(src.rng.choice(texts), src, texts)  # type: ignore[attr-defined]
            payload = agent_pb2.SetPolicyRequest(policy=text.decode("utf-8", "replace")).SerializeToString()
            client.send(
                methods["SetPolicy"], fuzzlib.mutate(payload, src) if src.int(0, 3) == 0 else payload, 10
            )
            client.send(methods["GetGuestDetails"], b"", 10)
            tally.add(client.drain(grace=30, window=8))
        tally.add(client.drain(grace=30))
        assert not tally.unknown, tally.summary()
        client.check()


def test_policy_with_real_containers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logs of container "quiet" come back blank (and it is never blocked on its pipe);
    ExecProcess runs echo but not sh."""
    from tests.e2e.conftest import require_guest_tools
    from tests.e2e.guest import GuestAgent
    from tests.e2e.pod import Pod, add_rootfs, container_spec, share_storage

    require_guest_tools("crun")
    text = rego(
        "default ReadStreamRequest := true",
        'ReadStreamRequest := false if { input.container_id == "quiet" }',
        "default ExecProcessRequest := false",
        'ExecProcessRequest if { not input.process.Args[0] in {"sh", "/bin/sh"} }',
        skip=("ReadStreamRequest", "ExecProcessRequest"),
    )
    (tmp_path / "policy.rego").write_text(text)
    monkeypatch.setenv("KATA_AGENT_POLICY_FILE", str(tmp_path / "policy.rego"))
    share = tmp_path / "share"
    for cid in ("loud", "quiet"):
        add_rootfs(share, cid)
    (tmp_path / "guest").mkdir()
    guest = GuestAgent(tmp_path / "guest", python_args=("-m", "tests.hardening.policy_agent"))
    try:
        pod = Pod(guest)
        pod.call(
            "CreateSandbox", agent_pb2.CreateSandboxRequest(hostname="pod", storages=[share_storage(share)])
        )
        pod.create("loud", container_spec("loud", ["sh", "-c", "echo loud-up; exec sleep 1000"]))
        # more than the pipe and the agent's buffer hold: it ends only if the agent drains what it blanks
        pod.create("quiet", container_spec("quiet", ["sh", "-c", "head -c 4194304 /dev/zero; echo secret"]))
        pod.start("loud")
        pod.start("quiet")
        assert pod.read_until("loud", "loud", b"loud-up\n") == b"loud-up\n"
        answers: list[bytes] = []
        done = threading.Event()

        def keep_reading() -> None:  # as the runtime's log copier does
            while not done.is_set():
                answers.append(pod.read("quiet", "quiet", size=1 << 20))

        reader = threading.Thread(target=keep_reading, daemon=True)
        reader.start()
        try:
            assert pod.wait("quiet", "quiet") == 0
        finally:
            done.set()
            reader.join(60)
        assert answers and set(answers) == {b""}, {len(a) for a in answers}

        with pytest.raises(RPCError) as err:
            pod.exec("loud", "e1", ["sh", "-c", "id"])
        assert err.value.code == Code.PERMISSION_DENIED
        status, out, _ = pod.run("loud", "e2", ["echo", "allowed"])
        assert (status, out) == (0, b"allowed\n")
    finally:
        guest.stop()
