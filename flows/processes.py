"""Child processes of long-running commands, and stopping every one of them on SIGTERM or Ctrl-C.

Why: `mlflow ui`, `prefect server start`, uvicorn and Prefect's flow runners start workers of their
own, some in new sessions. A plain SIGTERM kills only the draftedit process; its children,
re-parented to init, keep running. `guard_process_tree` (wrapped around every command by
`flows.cli.main`) makes this process the *subreaper* of whatever it starts, so orphaned
descendants are re-parented to it instead of init; turns SIGTERM and SIGHUP into KeyboardInterrupt,
so every `finally` and Prefect's own clean-up (atexit) run as on Ctrl-C; and on the way out stops
every descendant still alive: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process, read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int | None = None) -> list[int]:
    """Live descendants of `pid` (default: this process), however deep, parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as stopped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pids: list[int]) -> None:
    """Collect the exit status of those that are our children (started or adopted), so no zombie stays."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop_processes(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM `pids`, wait up to `grace` seconds, SIGKILL the rest; returns those SIGKILLed."""
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pids)
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.05)
    killed = [p for p in pids if alive(p)]
    _signal(killed, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in killed) and time.monotonic() < deadline:
        _reap(killed)
        time.sleep(0.05)
    _reap(killed)
    return killed


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """A child in its own session, so a terminal's Ctrl-C reaches it only through `stop`."""
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def stop(*procs: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop `procs` and every process below them, even those that left their process group: all
    are signalled at once (servers forward SIGTERM to their workers), SIGKILL after `grace` s."""
    running = [proc for proc in procs if proc.poll() is None]  # a reaped pid may already be someone else's
    tree = [p for proc in running for p in (proc.pid, *descendants(proc.pid))]
    for proc in running:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    stop_processes(tree, grace=grace)
    for proc in running:
        proc.wait()


def _subreaper(on: bool) -> bool:
    """Set this process's child-subreaper flag (Linux); returns the previous value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
        return bool(flag.value)
    except (OSError, AttributeError):
        return False


class _Stop:
    """The stop signal received inside the guard (None until one arrives)."""

    signal: int | None = None


def _interrupt(signum: int, _frame) -> None:  # noqa: ANN001 - signal handler signature
    _Stop.signal = signum
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def guard_process_tree(grace: float = 10.0) -> Iterator[None]:
    """Within: SIGTERM/SIGHUP act like Ctrl-C. When left after Ctrl-C or one of those signals (even
    if the command caught the KeyboardInterrupt), every process started inside, however deep, is
    stopped within `grace` seconds (then SIGKILL).

    A normal run sweeps nothing: the command stopped its own children, and in-process callers
    (tests) may keep services that Prefect started lazily. Processes that existed before are never
    touched. Outside the main thread (no signal handlers there) only a Ctrl-C triggers the sweep.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS} if in_main else {}
    was_subreaper = _subreaper(True)
    before = set(descendants())
    _Stop.signal = None
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if interrupted or _Stop.signal is not None:
            for sig in STOP_SIGNALS if in_main else ():  # a second signal must not cut the clean-up short
                signal.signal(sig, signal.SIG_IGN)
            stop_processes([p for p in descendants() if p not in before], grace=grace)
        _subreaper(was_subreaper)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
