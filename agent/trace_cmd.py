"""``kata-agent trace PID``: follow a guest process's system calls, strace-style.

A guest image has no strace. python-ptrace (ptrace(2) in pure Python, the
optional ``debug`` extra) does the attaching and the syscall decoding, so from
the debug console one can still see what a stuck container process is doing:
each completed call is printed as ``[pid] name(args) = result``.

It runs as its own process, never inside the agent, and leaves the traced
process as it found it: it attaches with PTRACE_ATTACH and, on Ctrl-C,
SIGTERM, ``--duration`` or ``--max-syscalls``, detaches every tracee, running
or not. A running tracee is first stopped with a SIGSTOP aimed at that thread
(tgkill), and that SIGSTOP is swallowed by the detach, so the process never
ends up stopped. Waiting on tracees steals no exit from the agent's reaper:
when a traced process that is not our child exits, the kernel tells us and
then, as usual, its real parent.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from typing import Any, TextIO

__WALL = 0x40000000


class _Stop(Exception):
    """Raised out of a blocking wait by SIGINT/SIGTERM/SIGALRM."""


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kata-agent trace",
        description="Print the system calls of a running process (ptrace; needs python-ptrace).",
    )
    p.add_argument("pid", type=int, help="process to trace")
    p.add_argument("-f", "--follow-forks", action="store_true", help="trace its new children too")
    p.add_argument("-n", "--max-syscalls", type=int, default=0, metavar="N", help="stop after N calls")
    p.add_argument("-t", "--duration", type=float, default=0.0, metavar="SECONDS", help="stop after SECONDS")
    p.add_argument("-e", "--only", default="", metavar="NAMES", help="comma-separated syscalls to show")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    return p.parse_args(argv)


def _tgkill(pid: int, tid: int, signum: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _detach(pid: int) -> None:
    """Detach from ``pid`` whatever state it is in, leaving it running."""
    from ptrace.binding import ptrace_cont, ptrace_detach
    from ptrace.error import PtraceError

    try:
        ptrace_detach(pid, 0)  # works when it sits in a ptrace-stop
        return
    except PtraceError:
        pass
    try:
        _tgkill(pid, pid, signal.SIGSTOP)
    except OSError:
        return  # gone
    while True:
        try:
            _, status = os.waitpid(pid, __WALL)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if not os.WIFSTOPPED(status):
            return  # it exited meanwhile
        sig = os.WSTOPSIG(status)
        try:
            if sig == signal.SIGSTOP:
                ptrace_detach(pid, 0)  # and the SIGSTOP is never delivered
                return
            # A syscall-stop (SIGTRAP|0x80) or another signal: let it go on until our SIGSTOP.
            ptrace_cont(pid, 0 if sig & 0x80 or sig == signal.SIGTRAP else sig)
        except PtraceError:
            return


def trace(
    pid: int,
    out: TextIO,
    *,
    follow_forks: bool = False,
    max_syscalls: int = 0,
    duration: float = 0.0,
    only: frozenset[str] = frozenset(),
) -> int:
    """Trace ``pid`` until it exits or a limit/signal says stop; returns an exit code."""
    from ptrace.debugger import (
        NewProcessEvent,
        ProcessExecution,
        ProcessExit,
        ProcessSignal,
        PtraceDebugger,
    )
    from ptrace.error import PtraceError
    from ptrace.func_call import FunctionCallOptions

    options = FunctionCallOptions(write_types=False, write_argname=False, string_max_length=64)
    state = {"stop": False, "waiting": False}

    def on_signal(signum: int, frame: Any) -> None:
        state["stop"] = True
        if state["waiting"]:  # only a blocking wait is interrupted; elsewhere the loop checks
            raise _Stop()

    # Handlers first: a Ctrl-C from the moment we attach must end in a clean detach.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    dbg = PtraceDebugger()
    if follow_forks:
        dbg.traceFork()
        dbg.traceExec()
    try:
        first = dbg.addProcess(pid, False)
    except PtraceError as exc:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"kata-agent trace: cannot attach to {pid}: {reason}", file=sys.stderr)
        return 1
    if duration > 0:
        signal.setitimer(signal.ITIMER_REAL, duration)
    count = 0

    def emit(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    try:
        if not state["stop"]:
            first.syscall()
        while dbg.list and not state["stop"]:
            state["waiting"] = True
            try:
                event = dbg.waitSyscall()
            except ProcessExit as ev:
                how = (
                    f"killed by {signal.Signals(ev.signum).name}"
                    if ev.signum
                    else f"exited with {ev.exitcode}"
                )
                emit(f"[{ev.process.pid}] +++ {how} +++")
                continue
            except ProcessSignal as ev:
                emit(f"[{ev.process.pid}] --- {signal.Signals(ev.signum).name} ---")
                ev.process.syscall(ev.signum)
                continue
            except NewProcessEvent as ev:
                emit(f"[{ev.process.pid}] +++ new process (parent {ev.process.parent.pid}) +++")
                ev.process.syscall()
                ev.process.parent.syscall()
                continue
            except ProcessExecution as ev:
                ev.process.syscall()
                continue
            finally:
                state["waiting"] = False
            proc = event.process
            call = proc.syscall_state.event(options)
            if call is not None and call.result is not None and (not only or call.name in only):
                emit(f"[{proc.pid}] {call.format()} = {call.result_text}")
                count += 1
                if max_syscalls and count >= max_syscalls:
                    break
            proc.syscall()
    except _Stop:
        pass
    except PtraceError as exc:
        if exc.errno != errno.ESRCH:  # a tracee vanishing under us is the normal end
            print(f"kata-agent trace: {exc}", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for tracee in list(dbg.list):
            _detach(tracee.pid)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        import ptrace.debugger  # noqa: F401
    except ImportError:
        print("kata-agent trace: python-ptrace is not installed (pip install python-ptrace)", file=sys.stderr)
        return 1
    only = frozenset(n.strip() for n in args.only.split(",") if n.strip())
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        return trace(
            args.pid,
            out,
            follow_forks=args.follow_forks,
            max_syscalls=args.max_syscalls,
            duration=args.duration,
            only=only,
        )
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
