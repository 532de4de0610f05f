"""The sandbox's child bootstrap: sets the protections up inside the child, then ``exec``s the user program.

The parent (`components.sandbox.run_python`) runs this file as ``python -I -S boot.py SPEC``: no
site-packages and no project on the path, so it imports only the standard library. SPEC is the
JSON that `run_python` builds; the report of which protections are on goes back through the
status pipe named in it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

NOBODY_UID = 65534
NOBODY_GID = 65534
SETUP_FAILED_EXIT = 121  # bootstrap could not apply a protection it was required to apply

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
SYSTEM_LIBS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32",
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


def is_under(path: str, roots: tuple[str, ...]) -> bool:
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
        for path in [*spec["expose"], *SYSTEM_LIBS]:
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
        if is_under(point, _KERNEL_FS) or not os.path.isdir(point):
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
        fds = [(p, os.open(p, os.O_RDONLY | os.O_DIRECTORY)) for p in paths if is_under(p, (blocker,))]
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
