"""Sandbox, container and process RPCs: check the request, call the domain, build the reply.

The domain is :mod:`agent.sandbox` and :mod:`agent.container`; this module
only converts protobuf to plain values (the OCI spec through
``agent.runtime.spec``) and results back. Calls that wait for something
(WaitProcess, ReadStdout/ReadStderr, WriteStdin, GetOOMEvent) return futures
and give up their wait when the caller goes away (``ctx.on_cancel``).
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import empty_pb2

from agent.errors import InvalidArgument, Unimplemented
from agent.protocols import agent_pb2, types_pb2
from agent.sandbox import Sandbox
from agent.storage import StorageSpec
from agent.tasks import then
from agent.validation import validate_id, validate_process
from ttrpc.loop import Future
from ttrpc.server import CallContext

EMPTY = empty_pb2.Empty()
#: After DestroySandbox as PID 1: how long the reply has to leave before the loop stops.
STOP_DELAY = 0.2


def _sandbox(agent: Any) -> Sandbox:
    return agent.component("sandbox", Sandbox.for_agent)


def _empty(fut: Future[Any] | None) -> Any:
    return EMPTY if fut is None else then(fut, lambda _result: EMPTY)


def _timeout(ctx: CallContext) -> float | None:
    """The runtime-call budget: what is left of the RPC's deadline (at least a second)."""
    left = ctx.time_remaining()
    return None if left is None else max(left, 1.0)


def _cancellable(fut: Future[Any], ctx: CallContext) -> Future[Any]:
    ctx.on_cancel(fut.cancel)
    return fut


def _storage(s: agent_pb2.Storage) -> StorageSpec:
    group = s.fs_group if s.HasField("fs_group") else None
    if group is not None and group.group_change_policy not in types_pb2.FSGroupChangePolicy.values():
        raise InvalidArgument(
            f"storage {s.mount_point!r}: fs_group.group_change_policy {group.group_change_policy} is unknown"
        )
    return StorageSpec(
        driver=s.driver,
        mount_point=s.mount_point,
        source=s.source,
        fstype=s.fstype,
        options=tuple(s.options),
        driver_options=tuple(s.driver_options),
        fs_group=group.group_id if group is not None else None,
        fs_group_policy=types_pb2.FSGroupChangePolicy.Name(group.group_change_policy) if group else "Always",
        shared=s.shared,
    )


def _device(d: agent_pb2.Device) -> Any:
    from agent.devices.hotplug import DeviceSpec

    device = DeviceSpec(
        id=d.id, type=d.type, vm_path=d.vm_path, container_path=d.container_path, options=tuple(d.options)
    )
    device.check()
    return device


# -- sandbox ---------------------------------------------------------------------------


def create_sandbox(agent: Any, req: agent_pb2.CreateSandboxRequest, ctx: CallContext) -> Any:
    if req.sandbox_id:
        validate_id(req.sandbox_id, "sandbox_id")
    fut = _sandbox(agent).create(
        sandbox_id=req.sandbox_id,
        hostname=req.hostname,
        dns=list(req.dns),
        storages=[_storage(s) for s in req.storages],
        share_pidns=req.sandbox_pidns,
        hook_path=req.guest_hook_path,
        modules=[(m.name, list(m.parameters)) for m in req.kernel_modules],
    )
    return _empty(fut)


def destroy_sandbox(agent: Any, req: agent_pb2.DestroySandboxRequest, ctx: CallContext) -> Any:
    def done(_result: None) -> empty_pb2.Empty:
        if os.getpid() == 1:  # the guest's init: power the VM off once the reply is out
            agent.power_off_requested = True
            agent.loop.call_later(STOP_DELAY, agent.stop)
        return EMPTY

    return then(_sandbox(agent).destroy(), done)


def remove_stale_virtiofs_share_mounts(agent: Any, req: Any, ctx: CallContext) -> Any:
    return _empty(agent.loop.run_in_thread(_sandbox(agent).stale_share_mounts))


def update_ephemeral_mounts(agent: Any, req: agent_pb2.UpdateEphemeralMountsRequest, ctx: CallContext) -> Any:
    storages = [_storage(s) for s in req.storages]
    if not storages:
        return EMPTY
    return _empty(agent.loop.run_in_thread(_sandbox(agent).update_ephemeral, storages))


def get_oom_event(agent: Any, req: agent_pb2.GetOOMEventRequest, ctx: CallContext) -> Any:
    fut = _cancellable(_sandbox(agent).oom.get(), ctx)
    return then(fut, lambda cid: agent_pb2.OOMEvent(container_id=cid))


# -- containers ------------------------------------------------------------------------


def create_container(agent: Any, req: agent_pb2.CreateContainerRequest, ctx: CallContext) -> Any:
    from agent.runtime.spec import spec_to_json

    cid = validate_id(req.container_id)
    exec_id = validate_id(req.exec_id, "exec_id") if req.exec_id else cid
    if not req.HasField("OCI"):
        raise InvalidArgument("OCI (the container's spec) is missing")
    devices = [_device(d) for d in req.devices]
    if req.shared_mounts:
        raise Unimplemented("shared_mounts are not supported yet")
    fut = _sandbox(agent).create_container(
        cid,
        exec_id,
        spec_to_json(req.OCI),
        [_storage(s) for s in req.storages],
        req.sandbox_pidns,
        _timeout(ctx),
        devices,
    )
    return _empty(fut)


def _container(agent: Any, container_id: str) -> Any:
    return _sandbox(agent).container(validate_id(container_id))


def start_container(agent: Any, req: agent_pb2.StartContainerRequest, ctx: CallContext) -> Any:
    return _empty(_container(agent, req.container_id).start(_timeout(ctx)))


def remove_container(agent: Any, req: agent_pb2.RemoveContainerRequest, ctx: CallContext) -> Any:
    return _empty(_container(agent, req.container_id).remove(req.timeout or None))


def pause_container(agent: Any, req: agent_pb2.PauseContainerRequest, ctx: CallContext) -> Any:
    return _empty(_container(agent, req.container_id).pause())


def resume_container(agent: Any, req: agent_pb2.ResumeContainerRequest, ctx: CallContext) -> Any:
    return _empty(_container(agent, req.container_id).resume())


def update_container(agent: Any, req: agent_pb2.UpdateContainerRequest, ctx: CallContext) -> Any:
    from agent.runtime.spec import resources_to_json

    container = _container(agent, req.container_id)
    resources = resources_to_json(req.resources) if req.HasField("resources") else {}
    return _empty(container.update(resources))


def stats_container(agent: Any, req: agent_pb2.StatsContainerRequest, ctx: CallContext) -> Any:
    return then(_container(agent, req.container_id).stats(), _stats_reply)


def _stats_reply(result: tuple[Any, list[dict[str, Any]]]) -> agent_pb2.StatsContainerResponse:
    cgroup_stats, networks = result
    reply = agent_pb2.StatsContainerResponse()
    _fill(reply.cgroup_stats, cgroup_stats)
    for net in networks:
        reply.network_stats.add(**net)
    return reply


def _fill(msg: Any, obj: Any) -> None:
    """Copy a stats dataclass (fields named like the protobuf) into ``msg``."""
    for name, value in vars(obj).items():
        if isinstance(value, list):
            field = getattr(msg, name)
            for item in value:
                if hasattr(item, "__dict__"):
                    _fill(field.add(), item)
                else:
                    field.append(item)
        elif isinstance(value, dict):
            field = getattr(msg, name)
            for key, item in value.items():
                if hasattr(item, "__dict__"):
                    _fill(field[key], item)
                else:
                    field[key] = max(int(item), 0)
        elif hasattr(value, "__dict__"):
            _fill(getattr(msg, name), value)
        else:
            setattr(
                msg, name, max(value, 0) if isinstance(value, int) and not isinstance(value, bool) else value
            )


def get_diagnostic_data(agent: Any, req: agent_pb2.GetDiagnosticDataRequest, ctx: CallContext) -> Any:
    from agent.diagnostics import LOG_TYPES, read_diagnostic

    if req.log_type not in LOG_TYPES:
        raise InvalidArgument(f"log_type {req.log_type!r} is not one of {', '.join(sorted(LOG_TYPES))}")
    container = _container(agent, req.container_id)
    fut = agent.loop.run_in_thread(read_diagnostic, container, req.log_type)
    return then(fut, lambda text: agent_pb2.GetDiagnosticDataResponse(data=text))


# -- processes -------------------------------------------------------------------------


def exec_process(agent: Any, req: agent_pb2.ExecProcessRequest, ctx: CallContext) -> Any:
    from agent.runtime.spec import process_to_json

    container = _container(agent, req.container_id)
    exec_id = validate_id(req.exec_id, "exec_id")
    if not req.HasField("process"):
        raise InvalidArgument("process is missing")
    process = process_to_json(req.process)
    validate_process(process)
    return _empty(container.exec(exec_id, process, _timeout(ctx)))


def signal_process(agent: Any, req: agent_pb2.SignalProcessRequest, ctx: CallContext) -> Any:
    return _empty(_container(agent, req.container_id).signal(req.exec_id, req.signal))


def wait_process(agent: Any, req: agent_pb2.WaitProcessRequest, ctx: CallContext) -> Any:
    fut = _cancellable(_container(agent, req.container_id).wait(req.exec_id), ctx)
    return then(fut, lambda code: agent_pb2.WaitProcessResponse(status=code))


def write_stdin(agent: Any, req: agent_pb2.WriteStreamRequest, ctx: CallContext) -> Any:
    fut = _cancellable(_container(agent, req.container_id).write(req.exec_id, req.data), ctx)
    return then(fut, lambda n: agent_pb2.WriteStreamResponse(len=n))


def _read(agent: Any, req: agent_pb2.ReadStreamRequest, ctx: CallContext, stream: str) -> Any:
    fut = _cancellable(_container(agent, req.container_id).read(req.exec_id, stream, req.len), ctx)
    return then(fut, lambda data: agent_pb2.ReadStreamResponse(data=data))


def read_stdout(agent: Any, req: agent_pb2.ReadStreamRequest, ctx: CallContext) -> Any:
    return _read(agent, req, ctx, "stdout")


def read_stderr(agent: Any, req: agent_pb2.ReadStreamRequest, ctx: CallContext) -> Any:
    return _read(agent, req, ctx, "stderr")


def close_stdin(agent: Any, req: agent_pb2.CloseStdinRequest, ctx: CallContext) -> Any:
    _container(agent, req.container_id).close_stdin(req.exec_id)
    return EMPTY


def tty_win_resize(agent: Any, req: agent_pb2.TtyWinResizeRequest, ctx: CallContext) -> Any:
    _container(agent, req.container_id).resize(req.exec_id, req.row, req.column)
    return EMPTY
