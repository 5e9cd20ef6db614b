"""Guest service RPCs: thin handlers over ``agent.guest`` (and the uevent waits).

Anything that may block (sysfs writes that online CPUs or memory, file
writes, swapon, statvfs on a network filesystem, resize2fs) runs on the loop's
bounded thread pool, so a slow guest never delays another call. Domain modules
are imported inside the handlers: the idle agent loads none of them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2

from agent import log
from agent.errors import (
    AgentError,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from agent.protocols import agent_pb2, csi_pb2
from ttrpc.loop import Future
from ttrpc.status import RPCError

if TYPE_CHECKING:
    from agent.app import Agent
    from ttrpc.server import CallContext

_log = log.logger("guest")
_EMPTY = empty_pb2.Empty()
#: resize2fs / xfs_growfs on a large volume can take minutes.
RESIZE_TIMEOUT = 600.0


_ERRNO_ERRORS: dict[int, type[AgentError]] = {
    errno.ENOENT: NotFound,
    errno.ENOTDIR: NotFound,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.EROFS: PermissionDenied,
    errno.EEXIST: AlreadyExists,
    errno.EISDIR: InvalidArgument,
    errno.EINVAL: InvalidArgument,
    errno.ENAMETOOLONG: InvalidArgument,
    errno.ELOOP: InvalidArgument,
    errno.ENOSPC: ResourceExhausted,
}


def _status_error(exc: BaseException) -> BaseException:
    """Give an error the domain left unclassified its status (an OS error by errno, a NUL
    byte in a path as invalid), so the runtime never sees a bare UNKNOWN."""
    if isinstance(exc, RPCError):
        return exc
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.filename:
            text = f"{text}: {exc.filename}"
        return _ERRNO_ERRORS.get(exc.errno or 0, Internal)(text)
    if isinstance(exc, ValueError):
        return InvalidArgument(str(exc))
    return exc


def _offload(agent: Agent, build: Callable[[Any], Any], fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """Run ``fn(*args)`` on the pool; the reply is ``build(result)``."""
    out: Future[Any] = Future()

    def done(f: Future[Any]) -> None:
        exc = f.exception()
        if exc is not None:
            out.set_exception(_status_error(exc))
            return
        try:
            out.set_result(build(f.result()))
        except Exception as err:  # noqa: BLE001 - the call's answer
            out.set_exception(err)

    agent.loop.run_in_thread(fn, *args).add_done_callback(done)
    return out


def _settle(out: Future[Any]) -> Callable[[Future[Any]], None]:
    """A done-callback that gives ``out`` the outcome of the future it is called with."""

    def copy(f: Future[Any]) -> None:
        if f.cancelled():
            out.cancel()
        elif f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
        else:
            out.set_result(f.result())

    return copy


def _empty(_: object = None) -> empty_pb2.Empty:
    return _EMPTY


# -- memory and CPUs -------------------------------------------------------------------


def online_cpu_mem(agent: Agent, req: agent_pb2.OnlineCPUMemRequest, ctx: CallContext) -> Future[Any]:
    """``nb_cpus`` online in total (hot-added CPUs may appear late: bounded retries), then
    the memory blocks unless ``cpu_only``. Between attempts the call waits on a loop timer,
    not in a pool thread, so retrying calls never starve other offloaded work."""
    from agent.guest import cpumem

    sysfs, target, out = agent.config.sysfs_root, req.nb_cpus, Future()
    tries = 0

    def attempt() -> None:
        _offload(agent, int, cpumem.online_cpus_step, target, sysfs).add_done_callback(checked)

    def checked(f: Future[int]) -> None:
        nonlocal tries
        if f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
        elif f.result() >= target:
            cpus_done()
        elif ctx.cancelled:
            out.cancel()
        elif (tries := tries + 1) >= cpumem.MAX_RETRIES:
            out.set_exception(
                FailedPrecondition(
                    f"failed to online {target} CPU(s) after {tries} retries: {f.result()} online"
                )
            )
        else:
            agent.loop.call_later(cpumem.RETRY_INTERVAL, attempt)

    def cpus_done() -> None:
        if target > 0:
            _offload(agent, _empty, _refresh_container_cpusets, agent).add_done_callback(memory_next)
        else:
            memory_next(None)

    def memory_next(f: Future[Any] | None) -> None:
        if f is not None and f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
            return
        if req.cpu_only:
            out.set_result(_EMPTY)
        else:
            _offload(agent, _empty, cpumem.online_memory, sysfs).add_done_callback(_settle(out))

    if target > 0:
        attempt()
    else:
        cpus_done()
    return out


def _refresh_container_cpusets(agent: Agent) -> None:
    """Containers that did not pin CPUs get the newly onlined ones too (upstream does the same)."""
    sandbox = agent.find_component("sandbox")
    if sandbox is None:
        return
    from agent.cgroups.cpuset import refresh_cpuset, root_cpus

    for container in list(sandbox.containers.values()):
        cgroup = container.cgroup
        pinned = ((container.spec.get("linux") or {}).get("resources") or {}).get("cpu", {}).get("cpus")
        if cgroup is None or pinned:
            continue
        cpus = root_cpus(cgroup)
        if cpus:
            refresh_cpuset(cgroup, cpus)


def mem_hotplug_by_probe(
    agent: Agent, req: agent_pb2.MemHotplugByProbeRequest, ctx: CallContext
) -> Future[Any]:
    from agent.guest.cpumem import mem_hotplug_by_probe as probe

    return _offload(agent, _empty, probe, list(req.memHotplugProbeAddr), agent.config.sysfs_root)


def get_guest_details(
    agent: Agent, req: agent_pb2.GuestDetailsRequest, ctx: CallContext
) -> agent_pb2.GuestDetailsResponse:
    """Never fails: the runtime aborts the sandbox if it does, so a fact we cannot read is 0/false."""
    from agent.guest.details import guest_details
    from agent.version import AGENT_VERSION

    cfg = agent.config

    def details(block_size: bool, probe: bool) -> Any:
        return guest_details(
            block_size, probe, sysfs_root=cfg.sysfs_root, proc_root=cfg.proc_root, version=AGENT_VERSION
        )

    d = None
    wanted = (req.mem_block_size, req.mem_hotplug_probe)
    for block_size, probe in (wanted, (False, wanted[1]), (False, False)):
        try:
            d = details(block_size, probe)
            break
        except Exception as exc:  # noqa: BLE001 - degrade, never fail
            _log.warn("guest memory details unavailable", error=f"{type(exc).__name__}: {exc}")
    if d is None:
        return agent_pb2.GuestDetailsResponse(agent_details=agent_pb2.AgentDetails(version=AGENT_VERSION))
    a = d.agent_details
    return agent_pb2.GuestDetailsResponse(
        mem_block_size_bytes=d.mem_block_size_bytes,
        support_mem_hotplug_probe=d.support_mem_hotplug_probe,
        agent_details=agent_pb2.AgentDetails(
            version=a.version,
            init_daemon=a.init_daemon,
            device_handlers=a.device_handlers,
            storage_handlers=a.storage_handlers,
            supports_seccomp=a.supports_seccomp,
            extra_features=a.extra_features,
        ),
    )


def mem_agent_memcg_set(agent: Agent, req: agent_pb2.MemAgentMemcgConfig, ctx: CallContext) -> None:
    # As the upstream agent built or started without its mem-agent: INTERNAL, this text.
    raise Internal("mem-agent is disabled")


def mem_agent_compact_set(agent: Agent, req: agent_pb2.MemAgentCompactConfig, ctx: CallContext) -> None:
    raise Internal("mem-agent is disabled")


# -- entropy and clock ---------------------------------------------------------------------


def reseed_random_dev(agent: Agent, req: agent_pb2.ReseedRandomDevRequest, ctx: CallContext) -> Future[Any]:
    from agent.guest.entropy import reseed_random_dev as reseed

    return _offload(agent, _empty, reseed, bytes(req.data))


def set_guest_date_time(
    agent: Agent, req: agent_pb2.SetGuestDateTimeRequest, ctx: CallContext
) -> empty_pb2.Empty:
    from agent.guest.clock import set_guest_datetime

    if req.Sec <= 0:  # an unset request (all defaults) must not send the clock back to 1970
        raise InvalidArgument(f"SetGuestDateTime: Sec must be a positive time since the epoch, got {req.Sec}")
    set_guest_datetime(req.Sec, req.Usec)  # one syscall: no need for the pool
    return _EMPTY


# -- files -------------------------------------------------------------------------------


def copy_file(agent: Agent, req: agent_pb2.CopyFileRequest, ctx: CallContext) -> Future[Any]:
    from agent.guest.copyfile import CopyFileRequest
    from agent.guest.copyfile import copy_file as copy

    request = CopyFileRequest(
        path=req.path,
        data=bytes(req.data),
        offset=req.offset,
        file_size=req.file_size,
        file_mode=req.file_mode,
        dir_mode=req.dir_mode,
        uid=req.uid,
        gid=req.gid,
    )
    return _offload(agent, _empty, copy, request, agent.config.shared_dir)


# -- swap and volumes ------------------------------------------------------------------------


def add_swap(agent: Agent, req: agent_pb2.AddSwapRequest, ctx: CallContext) -> Future[Any]:
    """Wait (in the loop) for the virtio-blk disk at the PCI path, then swapon it (in the pool)."""
    from agent import uevents
    from agent.devices.block import watch_virtio_blk_pci
    from agent.devices.pci import PciPath
    from agent.guest.swap import swapon

    if not req.PCIPath:
        raise InvalidArgument("AddSwap: PCIPath is empty")
    path = PciPath.from_slots(list(req.PCIPath))
    sysfs = agent.config.sysfs_root
    waiting = uevents.install(agent).wait(lambda w: watch_virtio_blk_pci(w, path, sysfs_root=sysfs))
    ctx.on_cancel(waiting.cancel)
    out: Future[Any] = Future()

    def found(f: Future[str]) -> None:
        if f.cancelled() or f.exception() is not None:
            _settle(out)(f)
        else:
            _offload(agent, _empty, swapon, f.result()).add_done_callback(_settle(out))

    waiting.add_done_callback(found)
    return out


def add_swap_path(agent: Agent, req: agent_pb2.AddSwapPathRequest, ctx: CallContext) -> Future[Any]:
    from agent.guest.swap import add_swap_path as add

    return _offload(agent, _empty, add, req.path)


def get_volume_stats(agent: Agent, req: agent_pb2.VolumeStatsRequest, ctx: CallContext) -> Future[Any]:
    from agent.guest.volume import get_volume_stats as stats

    def build(s: Any) -> csi_pb2.VolumeStatsResponse:
        return csi_pb2.VolumeStatsResponse(
            usage=[
                csi_pb2.VolumeUsage(
                    available=u.available,
                    total=u.total,
                    used=u.used,
                    unit=csi_pb2.VolumeUsage.Unit.Value(u.unit),
                )
                for u in s.usage
            ],
            volume_condition=csi_pb2.VolumeCondition(abnormal=s.abnormal, message=s.message),
        )

    return _offload(agent, build, stats, req.volume_guest_path)


def resize_volume(agent: Agent, req: agent_pb2.ResizeVolumeRequest, ctx: CallContext) -> Future[Any]:
    from agent.guest.volume import resize_volume as resize
    from agent.process import run_from_thread

    if not req.volume_guest_path:
        raise InvalidArgument("ResizeVolume: volume_guest_path is empty")
    loop, reaper = agent.loop, agent.reaper  # the reaper is installed here, on the loop thread

    def runner(argv: list[str]) -> None:
        run_from_thread(loop, reaper, argv, timeout=RESIZE_TIMEOUT).check()

    def job() -> object:
        return resize(req.volume_guest_path, req.size, agent.config.proc_root, runner=runner)

    return _offload(agent, _empty, job)


# -- metrics --------------------------------------------------------------------------------


def get_metrics(agent: Agent, req: agent_pb2.GetMetricsRequest, ctx: CallContext) -> Future[Any]:
    from agent.guest.metrics import get_metrics as metrics

    return _offload(agent, lambda text: agent_pb2.Metrics(metrics=text), metrics, agent.config.proc_root)
