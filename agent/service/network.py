"""Guest network RPCs, done by the on-demand network worker driven from the loop.

pyroute2 lives only in the worker process (``agent.network.worker``), which
exits a few seconds after its last request. :class:`NetworkLink` is the
agent-wide handle on it, and it is driven by the event loop, not by a pool
thread running the blocking ``NetworkWorker.call``:

* waiting for the worker costs no pool thread, so a slow netlink operation or
  the cold start of the worker (~0.3 s to import pyroute2) never holds back
  the mounts and file writes that share the bounded pool;
* the worker is spawned from the loop thread, which is where the reaper must
  be installed (signal handlers) and which alone may register pids with it;
* many calls can be in flight on the one socketpair (the worker answers in
  order), each with its own loop timer.

The wire format is the sans-IO codec of ``agent.network.protocol``, carrying
the JSON forms of the protobuf messages (proto field names, see ``_to_dict``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2

from agent import log
from agent.errors import DeadlineExceeded, InvalidArgument, Unavailable
from agent.network import iptables
from agent.network.client import DEFAULT_CALL_TIMEOUT, DEFAULT_IDLE_TIMEOUT, NetworkWorker
from agent.network.protocol import ProtocolError
from agent.protocols import agent_pb2, types_pb2
from ttrpc.loop import Future, TimerHandle

if TYPE_CHECKING:
    import subprocess

    from agent.app import Agent
    from agent.reaper import ExitStatus
    from ttrpc.server import CallContext

COMPONENT = "network"
_log = log.logger("network")


class NetworkLink:
    """The loop's connection to the network worker: spawn on demand, many calls in flight."""

    def __init__(self, agent: Agent, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.agent = agent
        self.loop = agent.loop
        proc_root = agent.config.proc_root
        self.worker = NetworkWorker(
            idle_timeout,
            proc_root=None if proc_root == "/proc" else proc_root,
            on_spawn=self._on_spawn,
        )
        self._calls: dict[int, tuple[Future[Any], TimerHandle, str]] = {}
        self._out = bytearray()
        self._fd: int | None = None
        # Popen objects of live workers: referenced until the reaper reports the exit,
        # so their __del__ never polls (and steals) an exit status.
        self._launchers: dict[int, subprocess.Popen[bytes]] = {}
        agent.on_close(self.close)

    # -- worker lifecycle ----------------------------------------------------------

    def _on_spawn(self, pid: int) -> None:
        proc = self.worker.proc
        if proc is not None:
            self._launchers[pid] = proc
        self.agent.reaper.watch(pid).add_done_callback(lambda f: self._on_exit(pid, f))
        _log.debug("network worker started", worker_pid=pid)

    def _on_exit(self, pid: int, fut: Future[ExitStatus]) -> None:
        proc = self._launchers.pop(pid, None)
        status = None if fut.exception() is not None else fut.result()
        if proc is not None:
            proc.returncode = status.code if status is not None else -1
        _log.debug("network worker exited", worker_pid=pid, code=status.code if status else None)

    def _ensure_worker(self) -> None:
        if self.worker.usable(self.loop.time()):
            return
        self._detach()
        self.worker.start()
        self._fd = self.worker.fileno()
        self.loop.add_reader(self._fd, self._on_readable)

    def _detach(self, kill: bool = False) -> None:
        """Forget the current worker (it exits on EOF; ``kill`` for one that is stuck)."""
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
            self._fd = None
        self._out.clear()
        pid = self.worker.pid
        self.worker.close()
        if kill and pid is not None and pid in self._launchers:  # not reaped: the pid is still ours
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self._fail_all(Unavailable("the agent is shutting down"))
        self._detach()

    # -- calls ---------------------------------------------------------------------

    def call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> Future[Any]:
        """Run ``op`` in the worker; the future completes on the loop with its result."""
        fut: Future[Any] = Future()
        try:
            self._ensure_worker()
            req_id, data = self.worker.codec.encode_request(op, args)
        except (Unavailable, ProtocolError) as exc:
            fut.set_exception(exc if isinstance(exc, Unavailable) else InvalidArgument(str(exc)))
            return fut
        timer = self.loop.call_later(timeout, self._timed_out, req_id)
        self._calls[req_id] = (fut, timer, op)
        fut.add_done_callback(lambda f: self._forget(req_id) if f.cancelled() else None)
        self._out += data
        self._flush()
        return fut

    def _forget(self, req_id: int) -> None:
        """A cancelled call: its reply, when it comes, is dropped."""
        entry = self._calls.pop(req_id, None)
        if entry is not None:
            entry[1].cancel()

    def _flush(self) -> None:
        sock = self.worker.sock
        if sock is None or self._fd is None:
            return
        try:
            while self._out:
                sent = sock.send(self._out)
                del self._out[:sent]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._lost(f"writing to the network worker failed: {exc}")
            return
        if self._out:
            self.loop.add_writer(self._fd, self._flush)
        else:
            self.loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        sock = self.worker.sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost("network worker exited before answering")
            return
        try:
            replies = self.worker.codec.feed(data)
        except ProtocolError as exc:
            self._lost(f"network worker sent garbage: {exc}", kill=True)
            return
        for reply in replies:
            entry = self._calls.pop(reply.id, None)
            if entry is None:
                continue  # cancelled meanwhile
            fut, timer, _ = entry
            timer.cancel()
            try:
                fut.set_result(reply.unwrap())
            except Exception as exc:  # noqa: BLE001 - the worker's error, for the caller
                fut.set_exception(exc)

    def _timed_out(self, req_id: int) -> None:
        entry = self._calls.pop(req_id, None)
        if entry is None:
            return
        fut, _, op = entry
        fut.set_exception(DeadlineExceeded(f"network worker: no answer to {op} in time"))
        # The worker is stuck; everything queued behind the call is lost with it.
        self._lost(f"network worker restarted after {op} timed out", kill=True)

    def _lost(self, why: str, kill: bool = False) -> None:
        self._fail_all(Unavailable(why))
        self._detach(kill=kill)

    def _fail_all(self, exc: Exception) -> None:
        calls, self._calls = self._calls, {}
        for fut, timer, op in calls.values():
            timer.cancel()
            fut.set_exception(type(exc)(f"{exc.args[0]} ({op})"))


def link(agent: Agent) -> NetworkLink:
    return agent.component(COMPONENT, NetworkLink)


# -- helpers -------------------------------------------------------------------------


def _then(fut: Future[Any], fn: Callable[[Any], Any], ctx: CallContext | None = None) -> Future[Any]:
    """A future of ``fn(result)`` (``fn`` may itself return a future); errors pass through."""
    out: Future[Any] = Future()

    def chain(inner: Future[Any]) -> None:
        if inner.cancelled():
            out.cancel()
        elif inner.exception() is not None:
            out.set_exception(inner.exception())  # type: ignore[arg-type]
        else:
            out.set_result(inner.result())

    def done(f: Future[Any]) -> None:
        if f.cancelled():
            out.cancel()
            return
        if f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
            return
        try:
            value = fn(f.result())
        except Exception as exc:  # noqa: BLE001 - the call's answer
            out.set_exception(exc)
            return
        if isinstance(value, Future):
            out.add_done_callback(lambda o: value.cancel() if o.cancelled() else None)
            value.add_done_callback(chain)
        else:
            out.set_result(value)

    fut.add_done_callback(done)
    out.add_done_callback(lambda o: fut.cancel() if o.cancelled() else None)
    if ctx is not None:
        ctx.on_cancel(out.cancel)
    return out


# The worker speaks the JSON forms of the protobuf messages (proto field names, enums
# by name, default values left out). These two walk the descriptors instead of using
# protobuf's json_format, which with base64 would stay resident at ~0.3 MB for nothing:
# the messages here are flat (strings, integers, enums, nested and repeated messages).


def _to_dict(msg: Any) -> dict[str, Any]:
    """``MessageToDict(msg, preserving_proto_field_name=True)`` for these messages (ints stay ints)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        repeated = field.is_repeated
        if field.message_type is not None:
            out[field.name] = [_to_dict(v) for v in value] if repeated else _to_dict(value)
        elif field.enum_type is not None:
            names = field.enum_type.values_by_number
            out[field.name] = names[value].name if value in names else value
        else:
            out[field.name] = list(value) if repeated else value
    return out


def _fill(msg: Any, data: dict[str, Any]) -> Any:
    """``ParseDict(data, msg, ignore_unknown_fields=True)`` for the worker's replies."""
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        repeated = field.is_repeated
        if field.message_type is not None:
            if repeated:
                for item in value:
                    _fill(getattr(msg, key).add(), item)
            else:
                _fill(getattr(msg, key), value)
        elif field.enum_type is not None and isinstance(value, str):
            setattr(msg, key, field.enum_type.values_by_name[value].number)
        elif repeated:
            getattr(msg, key).extend(value)
        else:
            setattr(msg, key, value)
    return msg


def _interface(value: dict[str, Any]) -> types_pb2.Interface:
    return _fill(types_pb2.Interface(), value)


def _routes(values: list[dict[str, Any]]) -> agent_pb2.Routes:
    return _fill(agent_pb2.Routes(), {"Routes": values})


# -- handlers --------------------------------------------------------------------------


def update_interface(agent: Agent, req: agent_pb2.UpdateInterfaceRequest, ctx: CallContext) -> Future[Any]:
    if not req.HasField("interface"):
        raise InvalidArgument("UpdateInterface: interface is missing")
    iface = _to_dict(req.interface)
    net = link(agent)
    path = req.interface.devicePath
    if not path:
        return _then(net.call("update_interface", {"iface": iface}), _interface, ctx)
    # A hot-plugged NIC: its net device may not exist yet; wait for its uevent first.
    from agent import uevents
    from agent.devices.net import watch_pci_net_interface

    sysfs = agent.config.sysfs_root
    waiting = uevents.install(agent).wait(lambda w: watch_pci_net_interface(w, path, sysfs_root=sysfs))
    updated = _then(waiting, lambda _name: net.call("update_interface", {"iface": iface}))
    return _then(updated, _interface, ctx)


def update_routes(agent: Agent, req: agent_pb2.UpdateRoutesRequest, ctx: CallContext) -> Future[Any]:
    routes = [_to_dict(r) for r in req.routes.Routes]
    return _then(link(agent).call("update_routes", {"routes": routes}), _routes, ctx)


def list_interfaces(agent: Agent, req: agent_pb2.ListInterfacesRequest, ctx: CallContext) -> Future[Any]:
    def build(values: list[dict[str, Any]]) -> agent_pb2.Interfaces:
        return agent_pb2.Interfaces(Interfaces=[_interface(v) for v in values])

    return _then(link(agent).call("list_interfaces"), build, ctx)


def list_routes(agent: Agent, req: agent_pb2.ListRoutesRequest, ctx: CallContext) -> Future[Any]:
    return _then(link(agent).call("list_routes"), _routes, ctx)


def add_arp_neighbors(agent: Agent, req: agent_pb2.AddARPNeighborsRequest, ctx: CallContext) -> Future[Any]:
    neighbors = [_to_dict(n) for n in req.neighbors.ARPNeighbors]
    fut = link(agent).call("add_arp_neighbors", {"neighbors": neighbors})
    return _then(fut, lambda _: empty_pb2.Empty(), ctx)


def get_iptables(agent: Agent, req: agent_pb2.GetIPTablesRequest, ctx: CallContext) -> Future[Any]:
    fut = link(agent).call("get_iptables", {"is_ipv6": req.is_ipv6})
    return _then(fut, lambda text: agent_pb2.GetIPTablesResponse(data=iptables.from_wire(text)), ctx)


def set_iptables(agent: Agent, req: agent_pb2.SetIPTablesRequest, ctx: CallContext) -> Future[Any]:
    args = {"is_ipv6": req.is_ipv6, "data": iptables.to_wire(req.data)}
    fut = link(agent).call("set_iptables", args)
    return _then(fut, lambda text: agent_pb2.SetIPTablesResponse(data=iptables.from_wire(text)), ctx)
