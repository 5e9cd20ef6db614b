"""A container and its processes: the OCI runtime does the work, the agent keeps the state.

A :class:`Container` is created by ``runtime create`` in its bundle, started by
``runtime start``, extended by ``runtime exec --detach``, and removed by
``runtime delete --force``. Each :class:`Process` (the init and every exec) has
its stdio in the loop (pipes, or the pty master the runtime sends over the
console socket) and learns its exit from the one reaper: the runtime writes
the pid file and exits, the process is re-parented to the agent (a child
subreaper, or PID 1), and its exit is dispatched by pid.

Process bookkeeping follows what the Kata runtime expects:

* WaitProcess blocks until the exit; every waiter gets the same code (exit
  code, or 128+signal). An exec process is then forgotten for signals and
  waits, but its output stays readable until the reader has seen EOF on it
  (the shim drains stdout/stderr after WaitProcess returns). The init process
  stays until RemoveContainer.
* A signal to a process that is gone (or was never known) fails with the text
  ``ESRCH: No such process``, which the runtime treats as success.
"""

from __future__ import annotations

import os
import signal as signals
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import log
from agent.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from agent.ociruntime import RuntimeFailed, read_pid_file
from agent.process import DEVNULL
from agent.reaper import ExitStatus, Reaper
from agent.runtime.bundle import write_json
from agent.stdio import OUTPUT_LIMIT, ConsoleSocket, ProcessStdio
from agent.tasks import Steps, outcome, task, then, with_timeout
from ttrpc.loop import Future

if TYPE_CHECKING:
    from agent.cgroups import Cgroup
    from agent.sandbox import Sandbox

CREATING, CREATED, RUNNING, PAUSED, STOPPED, REMOVING = (
    "creating",
    "created",
    "running",
    "paused",
    "stopped",
    "removing",
)
ESRCH = "ESRCH: No such process"
MAX_PROCESSES = 1024  # live or undrained processes per container
MAX_READ = OUTPUT_LIMIT  # bytes per ReadStdout/ReadStderr answer
CONSOLE_TIMEOUT = 10.0  # the runtime sends the pty before it exits; this is a safety net
FREEZE_TIMEOUT = 10.0  # Pause/Resume: how long the freezer may take to settle
EXIT_WAIT = 10.0  # after ``delete --force``, how long the init may take to be reaped
VEOF = b"\x04"  # CloseStdin on a terminal: what a user's ^D would send
_log = log.logger("container")


class Process:
    """One process of a container: its stdio and its exit."""

    __slots__ = ("exec_id", "init", "pid", "stdio", "exit", "exited", "forgotten", "drained")

    def __init__(self, exec_id: str, init: bool) -> None:
        self.exec_id = exec_id
        self.init = init
        self.pid = 0
        self.stdio: ProcessStdio | None = None
        self.exit: ExitStatus | None = None
        self.exited: Future[ExitStatus] = Future()
        self.forgotten = False  # waited for (exec processes): no more signals or waits
        self.drained: set[str] = set()  # output streams whose EOF a reader has seen

    @property
    def alive(self) -> bool:
        return self.pid > 0 and self.exit is None

    def attach(self, reaper: Reaper, pid: int, mark: int) -> None:
        """The runtime told us the pid: learn its exit from the reaper."""
        self.pid = pid
        reaper.watch(pid, since=mark).add_done_callback(self._on_exit)

    def _on_exit(self, fut: Future[ExitStatus]) -> None:
        value, exc = outcome(fut)
        if exc is not None:  # the exit was lost (should not happen): report it as a failure
            value = ExitStatus(self.pid, 255, 255 << 8)
        self.exit = value
        if self.stdio is not None:
            self.stdio.process_exited()
        self.exited.set_result(value)

    def abandon(self, reason: str) -> None:
        """The process will never run (its create or exec failed): waiters get NotFound."""
        if not self.exited.done():
            self.exited.set_exception(NotFound(reason))

    def kill(self, sig: int) -> None:
        """Signal the process. Until the reaper collects it, its pid cannot be reused."""
        if not self.alive:
            raise NotFound(f"process {self.exec_id}: {ESRCH}")
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            raise NotFound(f"process {self.exec_id}: {ESRCH}") from None

    def finished_output(self) -> bool:
        """Every output stream has been read to EOF (or there is none left)."""
        stdio = self.stdio
        if stdio is None:
            return True
        return ("stdout" in self.drained or stdio.stdout.eof and not stdio.stdout.buffered) and (
            stdio.stderr is None or "stderr" in self.drained
        )

    def close(self) -> None:
        if self.stdio is not None:
            self.stdio.close()


class Container:
    """One container of the sandbox (see the module docstring)."""

    def __init__(self, sandbox: Sandbox, container_id: str, exec_id: str, bundle: str) -> None:
        self.sandbox = sandbox
        self.loop = sandbox.loop
        self.id = container_id
        self.bundle = bundle
        self.status = CREATING
        self.spec: dict[str, Any] = {}
        self.init = Process(exec_id, init=True)
        self.processes: dict[str, Process] = {exec_id: self.init}
        self.storages: list[str] = []  # mount points this container holds a reference on
        self.cgroup: Cgroup | None = None
        self.removing: Future[None] | None = None
        self._seq = 0
        self.init.exited.add_done_callback(self._on_init_exit)

    def _on_init_exit(self, fut: Future[ExitStatus]) -> None:
        if fut.exception() is not None:  # abandoned: the container was never created
            return
        if self.status not in (REMOVING,):
            self.status = STOPPED
        _log.info("container exited", container_id=self.id, code=fut.result().code)
        self.sandbox.on_init_exit(self)

    # -- lookups --------------------------------------------------------------

    def process(self, exec_id: str, *, forgotten: bool = False) -> Process:
        """The process ``exec_id`` ('' = the init); ``forgotten`` also finds waited-for ones."""
        proc = self.init if not exec_id or exec_id == self.id else self.processes.get(exec_id)
        if proc is None or (proc.forgotten and not forgotten):
            raise NotFound(f"process {exec_id} of container {self.id} not found: {ESRCH}")
        return proc

    def _file(self, prefix: str, suffix: str) -> str:
        self._seq += 1
        return os.path.join(self.bundle, f"{prefix}-{self._seq}{suffix}")

    def _require(self, *states: str) -> None:
        if self.status not in states:
            raise FailedPrecondition(f"container {self.id} is {self.status}, not {' or '.join(states)}")

    # -- create / start -------------------------------------------------------

    @task
    def create(self, timeout: float | None) -> Steps[None]:
        """``runtime create`` with the config.json already in the bundle."""
        sb = self.sandbox
        pid_file = os.path.join(self.bundle, "init.pid")
        terminal = bool((self.spec.get("process") or {}).get("terminal"))
        mark = sb.reaper.mark()
        self.init.stdio = yield from self._launch(
            terminal,
            lambda cli, console: cli.create(self.id, self.bundle, pid_file, console_socket=console),
            timeout,
        )
        self.init.attach(sb.reaper, read_pid_file(pid_file), mark)
        if self.status == CREATING:
            self.status = CREATED

    def _launch(
        self, terminal: bool, build: Callable[[Any, str | None], list[str]], timeout: float | None
    ) -> Steps[ProcessStdio]:
        """Run ``create`` or ``exec --detach`` wired to new stdio; returns that stdio."""
        sb = self.sandbox
        if terminal:
            console = ConsoleSocket(self.loop, sb.console_path())
            try:
                yield sb.runtime.call(build(sb.runtime.cli, console.path), self.id, timeout=timeout)
                master = yield with_timeout(
                    self.loop,
                    console.receive(),
                    CONSOLE_TIMEOUT,
                    lambda: Internal(f"{sb.runtime.flavor} sent no terminal for {self.id}"),
                )
            finally:
                console.close()
            return ProcessStdio.pty(self.loop, master, eof=VEOF)
        stdio = ProcessStdio.pipes(self.loop, pipe_size=sb.config.container_pipe_size)
        log_path = self._file("runtime", ".log")
        try:
            stdin, stdout, stderr = stdio.child_fds or (DEVNULL, DEVNULL, DEVNULL)
            fut = sb.runtime.call(
                build(sb.runtime.with_log(log_path), None),
                self.id,
                timeout=timeout,
                log_path=log_path,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
            )
            stdio.close_child_fds()  # the child has them now; ours would hold EOF back
            yield fut
        except BaseException:
            stdio.close()
            raise
        finally:
            _unlink(log_path)
        return stdio

    @task
    def start(self, timeout: float | None) -> Steps[None]:
        self._require(CREATED)
        sb = self.sandbox
        yield sb.runtime.call(sb.runtime.cli.start(self.id), self.id, timeout=timeout)
        if self.status == CREATED:
            self.status = RUNNING

    # -- exec -----------------------------------------------------------------

    @task
    def exec(self, exec_id: str, process: dict[str, Any], timeout: float | None) -> Steps[None]:
        """``runtime exec --detach`` of an OCI process object."""
        self._require(RUNNING)
        old = self.processes.get(exec_id)
        if old is not None:
            if not old.forgotten or old is self.init:
                raise AlreadyExists(f"process {exec_id} already exists in container {self.id}")
            old.close()
            del self.processes[exec_id]
        if len(self.processes) >= MAX_PROCESSES:
            raise ResourceExhausted(f"container {self.id} already has {MAX_PROCESSES} processes")
        proc = self.processes[exec_id] = Process(exec_id, init=False)
        sb = self.sandbox
        process_file = self._file("exec", ".json")
        pid_file = self._file("exec", ".pid")
        try:
            yield self.loop.run_in_thread(write_json, process_file, process)
            mark = sb.reaper.mark()
            proc.stdio = yield from self._launch(
                bool(process.get("terminal")),
                lambda cli, console: cli.exec(
                    self.id, process_file, pid_file, detach=True, console_socket=console
                ),
                timeout,
            )
            proc.attach(sb.reaper, read_pid_file(pid_file), mark)
        except BaseException as exc:
            proc.close()
            proc.abandon(f"process {exec_id} of container {self.id} was not started: {_reason(exc)}")
            if self.processes.get(exec_id) is proc:
                del self.processes[exec_id]
            raise
        finally:
            _unlink(process_file)
            _unlink(pid_file)

    # -- signals and waits ----------------------------------------------------

    def signal(self, exec_id: str, sig: int) -> Future[None] | None:
        """Signal a process; SIGKILL with no exec id kills every process of the container."""
        if not 0 < sig < signals.NSIG:
            raise InvalidArgument(f"signal {sig} is not a signal number")
        kill_all = not exec_id and sig == signals.SIGKILL
        proc = self.process(exec_id) if exec_id else self.init
        if proc.init and sig == signals.SIGTERM and proc.alive and not handles_signal(proc.pid, sig):
            sig = signals.SIGKILL  # a PID-namespace init ignores signals it has no handler for
            kill_all = kill_all or not exec_id
        if proc.alive:
            proc.kill(sig)
        elif not kill_all:
            raise NotFound(f"process {proc.exec_id} of container {self.id}: {ESRCH}")
        if not kill_all or self.status in (CREATING, REMOVING):
            return None
        return self._kill_all(sig)

    @task
    def _kill_all(self, sig: int) -> Steps[None]:
        sb = self.sandbox
        try:
            yield sb.runtime.call(sb.runtime.cli.kill(self.id, sig, all_processes=True), self.id)
        except RuntimeFailed as exc:
            sb.reaper.reap()  # the init may have died of our signal, its SIGCHLD not yet handled
            if self.init.alive:
                raise
            _log.debug("kill --all after the init exited", container_id=self.id, error=exc.message)

    def wait(self, exec_id: str) -> Future[int]:
        """The exit code (or 128+signal) once the process ends; then an exec process is forgotten."""
        proc = self.process(exec_id)
        fut = then(proc.exited, lambda status: status.code)
        if not proc.init:
            fut.add_done_callback(lambda f: f.cancelled() or self.loop.call_soon(self._forget, proc))
        return fut

    def _forget(self, proc: Process) -> None:
        proc.forgotten = True
        self._maybe_drop(proc)

    def _maybe_drop(self, proc: Process) -> None:
        if proc.forgotten and proc.finished_output() and self.processes.get(proc.exec_id) is proc:
            proc.close()
            del self.processes[proc.exec_id]

    # -- I/O ------------------------------------------------------------------

    def read(self, exec_id: str, stream: str, size: int) -> Future[bytes]:
        """ReadStdout/ReadStderr: at most ``size`` bytes once available, b"" at EOF."""
        proc = self.process(exec_id, forgotten=True)
        stdio = self._stdio(proc)
        out = stdio.stdout if stream == "stdout" else stdio.stderr
        if out is None:  # a terminal has no separate stderr
            fut: Future[bytes] = Future()
            fut.set_result(b"")
            return fut
        fut = out.read(min(size, MAX_READ))
        fut.add_done_callback(lambda f: self._on_read(proc, stream, f))
        return fut

    def _on_read(self, proc: Process, stream: str, fut: Future[bytes]) -> None:
        if not fut.cancelled() and fut.exception() is None and not fut.result():
            proc.drained.add(stream)
            self._maybe_drop(proc)

    def write(self, exec_id: str, data: bytes) -> Future[int]:
        """WriteStdin (empty data closes stdin)."""
        stdin = self._stdio(self.process(exec_id)).stdin
        if stdin is None:
            raise FailedPrecondition(f"process {exec_id or self.init.exec_id} has no stdin")
        return stdin.write(data)

    def close_stdin(self, exec_id: str) -> None:
        stdin = self._stdio(self.process(exec_id)).stdin
        if stdin is not None:
            stdin.close()

    def resize(self, exec_id: str, rows: int, cols: int) -> None:
        self._stdio(self.process(exec_id)).resize(rows, cols)

    def _stdio(self, proc: Process) -> ProcessStdio:
        if proc.stdio is None:
            raise FailedPrecondition(f"process {proc.exec_id} of container {self.id} is still being created")
        return proc.stdio

    # -- runtime operations ---------------------------------------------------

    @task
    def pause(self) -> Steps[None]:
        """``runtime pause``, then wait until every task is frozen (runtimes may return while
        the freezer still says FREEZING; the caller expects a paused container)."""
        self._require(RUNNING)
        yield self.sandbox.runtime.call(self.sandbox.runtime.cli.pause(self.id), self.id)
        if self.cgroup is not None:
            from agent.cgroups import freeze

            yield self.loop.run_in_thread(freeze, self.cgroup, FREEZE_TIMEOUT)
        if self.status == RUNNING:
            self.status = PAUSED

    @task
    def resume(self) -> Steps[None]:
        self._require(PAUSED)
        yield self.sandbox.runtime.call(self.sandbox.runtime.cli.resume(self.id), self.id)
        if self.cgroup is not None:
            from agent.cgroups import thaw

            yield self.loop.run_in_thread(thaw, self.cgroup, FREEZE_TIMEOUT)
        if self.status == PAUSED:
            self.status = RUNNING

    @task
    def update(self, resources: dict[str, Any]) -> Steps[None]:
        """``runtime update --resources`` (the runtime also keeps its own state right)."""
        self._require(CREATED, RUNNING, PAUSED)
        if not resources:
            return
        path = self._file("resources", ".json")
        try:
            yield self.loop.run_in_thread(write_json, path, resources)
            yield self.sandbox.runtime.call(self.sandbox.runtime.cli.update(self.id, path), self.id)
        finally:
            _unlink(path)

    @task
    def stats(self) -> Steps[tuple[Any, list[dict[str, Any]]]]:
        """(cgroup statistics, network statistics of the init's network namespace)."""
        if self.cgroup is None:
            raise FailedPrecondition(f"container {self.id} has no known cgroup")
        pid = self.init.pid if self.init.alive else 0
        proc_root = self.sandbox.config.proc_root
        return (yield self.loop.run_in_thread(_read_stats, self.cgroup, pid, proc_root))

    # -- removal --------------------------------------------------------------

    def remove(self, timeout: float | None) -> Future[None]:
        """``delete --force``, then release everything; a second call joins the first."""
        if self.status == CREATING:
            raise FailedPrecondition(f"container {self.id} is still being created")
        if self.removing is None:
            self.removing = self._remove()
        return with_timeout(
            self.loop,
            self.removing,
            timeout,
            lambda: DeadlineExceeded(f"container {self.id} was not removed within {timeout:g}s"),
        )

    @task
    def _remove(self) -> Steps[None]:
        sb = self.sandbox
        before, self.status = self.status, REMOVING
        sb.oom.unwatch(self.id)
        try:
            if self.init.pid or before != CREATING:
                try:
                    yield sb.runtime.call(sb.runtime.cli.delete(self.id, force=True), self.id)
                except RuntimeFailed as exc:
                    if not exc.missing:
                        raise
            if self.init.alive:
                yield from self._await_init_exit()
        except BaseException:
            self.status = before if self.init.alive else STOPPED
            self.removing = None
            raise
        for proc in self.processes.values():
            proc.close()
        yield from sb.release_container(self)

    def _await_init_exit(self) -> Steps[None]:
        def late() -> Exception:
            return DeadlineExceeded(f"the init of container {self.id} did not exit")

        try:
            yield with_timeout(self.loop, self.init.exited, EXIT_WAIT, late)
        except DeadlineExceeded:
            self.init.kill(signals.SIGKILL)  # the runtime said it was deleted: make it so
            yield with_timeout(self.loop, self.init.exited, EXIT_WAIT, late)


def handles_signal(pid: int, sig: int, proc_root: str = "/proc") -> bool:
    """Whether ``pid`` has a handler for ``sig`` (its ``SigCgt`` mask in /proc/<pid>/status)."""
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _read_stats(cgroup: Cgroup, pid: int, proc_root: str) -> tuple[Any, list[dict[str, Any]]]:
    from agent.cgroups import read_stats

    return read_stats(cgroup), (net_dev(f"{proc_root}/{pid}/net/dev") if pid else [])


_NET_FIELDS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped")
_NET_TX_FIELDS = ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def net_dev(path: str) -> list[dict[str, Any]]:
    """Interface counters from a ``/proc/<pid>/net/dev`` (named like ``grpc.NetworkStats``)."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) < 12:
            continue
        values = [int(v) for v in fields[:4]] + [int(v) for v in fields[8:12]]
        out.append({"name": name.strip(), **dict(zip(_NET_FIELDS + _NET_TX_FIELDS, values, strict=True))})
    return out


def _reason(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
