"""The code sandbox: hostile completions are contained, scored as failed, and the evaluator is unharmed.

Protections depend on the platform; each test asserts what the active protections promise and
skips (never runs unbounded) where the needed protection is missing. On Linux as root or with user
namespaces every layer is on, so every test runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from components.sandbox import SandboxLimits, _interpreter_dirs, run_python, run_tests
from components.sandbox.boot import _PRIVATE_TMP, SYSTEM_LIBS, _blocking_ancestor

REPO = Path(__file__).resolve().parent.parent
# The read-only fallback covers these with a private tmpfs: a checkout below one is hidden there.
REPO_UNDER_PRIVATE_TMP = next((t for t in _PRIVATE_TMP if str(REPO).startswith(os.path.realpath(t) + "/")), None)
# The wall-clock limit decides no outcome here except in the tests about the clock (CLOCK): a busy
# machine (two other jobs, a second copy of the suite) can take seconds just to start Python.
STRICT = SandboxLimits(timeout_s=60.0, memory_mb=256, max_processes=8, max_output_bytes=4096)
CLOCK = dataclasses.replace(STRICT, timeout_s=3.0)
SLACK_S = 30.0  # how late a kill or a clean-up may come on a loaded machine (bounds a hang, not speed)
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def protections() -> dict[str, str]:
    return run_python("pass", limits=STRICT).protections


def _on(protections: dict[str, str], *names: str) -> bool:
    return all(protections.get(n) == "on" for n in names)


def _processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(int(entry))
    return found


def _assert_unharmed() -> None:
    outcome = run_tests(GOOD, ADD_TEST, "add", limits=STRICT)
    assert outcome.passed, (outcome.status, outcome.detail, outcome.result.stderr)


# ---------------------------------------------------------------------------------------- basics


def test_correct_program_passes_and_wrong_program_fails():
    ok = run_tests(GOOD, ADD_TEST, "add", limits=STRICT)
    assert ok.passed and ok.status == "passed"
    bad = run_tests("def add(a, b):\n    return a - b\n", ADD_TEST, "add", limits=STRICT)
    assert not bad.passed and bad.status == "failed"
    assert "AssertionError" in bad.detail
    missing = run_tests("def plus(a, b):\n    return a + b\n", ADD_TEST, "add", limits=STRICT)
    assert not missing.passed and "defines no 'add'" in missing.detail


def test_stdout_stderr_and_exit_code_are_reported():
    res = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)", limits=STRICT)
    assert res.stdout.strip() == "out" and res.stderr.strip() == "err"
    assert res.returncode == 3 and not res.timed_out
    assert res.protections["rlimits"] == "on" and res.protections["process_group"] == "on"


def test_fresh_workdir_is_cwd_home_tmpdir_and_is_deleted_afterwards():
    code = "import os, json\nopen('scratch.txt', 'w').write('x')\nprint(json.dumps([os.getcwd(), os.environ['HOME'], os.environ['TMPDIR'], os.listdir('.')]))"
    first = json.loads(run_python(code, limits=STRICT).stdout)
    second = json.loads(run_python(code, limits=STRICT).stdout)
    cwd = first[0]
    assert first[1] == cwd and first[2] == cwd
    assert sorted(first[3]) == ["main.py", "scratch.txt"]
    assert second[0] != cwd, "each run gets a fresh directory"
    assert not os.path.exists(cwd), "the work dir is removed after the run"


def test_stdin_is_delivered_and_an_unread_flood_does_not_block_the_evaluator():
    assert run_python("import sys\nprint(len(sys.stdin.read()))", stdin="y" * 300_000, limits=STRICT).stdout.strip() == "300000"
    start = time.monotonic()
    res = run_python("import time\ntime.sleep(300)", stdin="x" * 5_000_000, limits=SandboxLimits(timeout_s=1.0))
    assert res.timed_out and time.monotonic() - start < 1.0 + SLACK_S


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=8)
    with pytest.raises(ValueError, match="relative"):
        run_python("pass", files={"../escape.py": "x"})


# ---------------------------------------------------------------------------------------- hostile


def test_infinite_loop_is_killed_at_the_wall_time_limit():
    start = time.monotonic()
    outcome = run_tests("def add(a, b):\n    while True:\n        pass\n", ADD_TEST, "add", limits=CLOCK)
    elapsed = time.monotonic() - start
    assert not outcome.passed and outcome.status == "timeout"
    assert outcome.result.timed_out and outcome.result.returncode == -9
    assert CLOCK.timeout_s <= elapsed < CLOCK.timeout_s + SLACK_S
    _assert_unharmed()


def test_memory_bomb_fails_fast_without_touching_the_evaluator():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
    outcome = run_tests("def add(a, b):\n" + textwrap.indent(bomb, "    "), ADD_TEST, "add", limits=STRICT)
    assert not outcome.passed and outcome.status == "failed"
    assert "MemoryError" in outcome.detail
    assert not outcome.result.timed_out, "the memory limit stops it, not the clock"
    one_shot = run_python("x = bytearray(4 * 1024 ** 3)\nprint('allocated')", limits=STRICT)
    assert "allocated" not in one_shot.stdout and "MemoryError" in one_shot.stderr
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: the parent did not grow
    _assert_unharmed()


def test_fork_bomb_is_bounded_and_leaves_no_process_behind(protections):
    if not (_on(protections, "nproc") or _on(protections, "pid_namespace")):
        pytest.skip(f"neither RLIMIT_NPROC nor a PID namespace is active here: {protections}")
    marker = f"forkbomb-{secrets.token_hex(6)}"
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    res = run_python(bomb, limits=CLOCK, argv=[marker])
    assert res.returncode != 0
    assert time.monotonic() - start < CLOCK.timeout_s + SLACK_S
    deadline = time.monotonic() + SLACK_S
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []
    outcome = run_tests("import os\nos.fork()\n" + GOOD, ADD_TEST, "add", limits=STRICT)
    assert outcome.status in ("passed", "failed")  # a single fork is allowed; the run is normal
    _assert_unharmed()


def test_process_that_leaves_the_group_is_still_killed(protections):
    if not _on(protections, "pid_namespace"):
        pytest.skip("needs a PID namespace: a setsid daemon escapes a process-group kill otherwise")
    marker = f"escapee-{secrets.token_hex(6)}"
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    res = run_python(code, limits=STRICT, argv=[marker])
    assert res.returncode == 0
    deadline = time.monotonic() + SLACK_S
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


def test_writes_outside_the_work_dir_are_blocked(protections, tmp_path):
    if not (_on(protections, "readonly_fs") or _on(protections, "drop_privileges")):
        pytest.skip(f"no filesystem protection active here: {protections}")
    tag = secrets.token_hex(6)
    repo_target = REPO / f"sandbox-escape-{tag}"
    test_target = tmp_path / f"escape-{tag}"
    tmp_target = Path("/tmp") / f"sandbox-escape-{tag}"
    code = textwrap.dedent(f"""
        import os
        results = {{}}
        for p in [{str(repo_target)!r}, {str(test_target)!r}, {str(tmp_target)!r}, os.path.join('..', 'escape-{tag}')]:
            try:
                with open(p, 'w') as fh:
                    fh.write('pwned')
                results[p] = 'written'
            except OSError as exc:
                results[p] = type(exc).__name__
        print(results)
    """)
    res = run_python(code, limits=STRICT)
    assert res.returncode == 0, res.stderr
    assert not repo_target.exists() and not test_target.exists()
    if _on(protections, "private_tmp"):
        assert not tmp_target.exists(), "/tmp writes land in a private tmpfs that dies with the run"
    assert not (Path(tempfile.gettempdir()) / f"escape-{tag}").exists()
    for p in (repo_target, test_target, tmp_target):
        if p.exists():
            p.unlink()


def test_project_home_and_host_files_are_hidden(protections, tmp_path):
    """Only the interpreter, system libraries and the work dir exist: the project tree, a data file
    elsewhere, home directories and /etc/passwd cannot be read, listed or even found."""
    if not _on(protections, "hidden_fs"):
        pytest.skip(f"no private root on this platform: {protections.get('hidden_fs')}")
    secret = secrets.token_hex(16)
    data_file = tmp_path / "someone-elses-data.txt"
    data_file.write_text(secret)
    os.chmod(tmp_path, 0o755)
    os.chmod(data_file, 0o644)  # readable by anyone on the host: only the sandbox's root hides it
    targets = [str(REPO / "components" / "sandbox" / "__init__.py"), str(REPO / "README.md"), str(data_file), "/etc/passwd",
               "/etc/shadow", str(Path(sys.prefix) / "pyvenv.cfg")]
    listings = [str(REPO), str(Path.home()), "/home", "/etc", str(Path(sys.base_prefix).parent)]
    code = textwrap.dedent(f"""
        import json, os, sqlite3, ssl, ctypes, decimal, hashlib  # the standard library still works
        found = {{}}
        for p in {targets!r}:
            try:
                found[p] = open(p, encoding='utf-8', errors='replace').read()
            except OSError as exc:
                found[p] = type(exc).__name__
        for d in {listings!r}:
            try:
                found[d] = sorted(os.listdir(d))
            except OSError as exc:
                found[d] = type(exc).__name__
        print(json.dumps(found))
    """)
    res = run_python(code, limits=STRICT)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert secret not in res.stdout
    for path in targets:
        assert found[path] == "FileNotFoundError", (path, found[path])
    assert found[str(REPO)] == "FileNotFoundError"
    visible = [*_interpreter_dirs(), *SYSTEM_LIBS]  # what the sandbox binds into its root
    for folder in listings:
        allowed = {Path(v).relative_to(folder).parts[0] for v in visible if v.startswith(folder.rstrip("/") + "/")}
        assert found[folder] == "FileNotFoundError" or set(found[folder]) <= allowed, (folder, found[folder], allowed)


def test_fallback_without_a_private_root_is_reported_and_still_read_only(protections):
    """Where the new root cannot be built, the read-only view remains, and the result says plainly
    that the host's files are readable."""
    if not _on(protections, "mount_namespace"):
        pytest.skip(f"no mount namespace here: {protections.get('mount_namespace')}")
    if not os.path.isfile("/etc/passwd"):
        pytest.skip("no /etc/passwd to show that the host's files stay readable")
    lim = dataclasses.replace(STRICT, hide_filesystem=False)
    target = f"/etc/sandbox-escape-{secrets.token_hex(6)}"
    code = f"import os\nprint(os.path.exists('/etc/passwd'))\ntry:\n    open({target!r}, 'w')\nexcept OSError as exc:\n    print(type(exc).__name__)"
    res = run_python(code, limits=lim)
    assert res.protections["hidden_fs"].startswith("off") and res.protections["readonly_fs"] == "on"
    visible, write = res.stdout.split()
    assert visible == "True", "the fallback only makes the host read-only"
    assert write.endswith("Error"), res.stdout
    assert not os.path.exists(target)
    assert run_tests(GOOD, ADD_TEST, "add", limits=lim).passed


@pytest.mark.skipif(REPO_UNDER_PRIVATE_TMP is not None,
                    reason=f"the checkout lies under {REPO_UNDER_PRIVATE_TMP}, which the fallback covers with a private tmpfs")
def test_fallback_keeps_the_project_readable_and_refuses_writes_to_it(protections):
    if not _on(protections, "mount_namespace"):
        pytest.skip(f"no mount namespace here: {protections.get('mount_namespace')}")
    lim = dataclasses.replace(STRICT, hide_filesystem=False)
    target = REPO / f"sandbox-escape-{secrets.token_hex(6)}"
    code = f"import os\nprint(os.path.exists({str(REPO / 'README.md')!r}))\ntry:\n    open({str(target)!r}, 'w')\nexcept OSError as exc:\n    print(type(exc).__name__)"
    res = run_python(code, limits=lim)
    visible, write = res.stdout.split()
    assert visible == "True", "the project stays visible, read-only"
    assert write.endswith("Error"), res.stdout
    assert not target.exists()


def test_environment_secrets_are_not_visible(monkeypatch):
    secret = secrets.token_hex(16)
    monkeypatch.setenv("DRAFTEDIT_TEST_SECRET", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    code = "import os, json\nprint(json.dumps(dict(os.environ)))\nprint(open('/proc/self/environ').read())"
    res = run_python(code, limits=STRICT)
    assert res.returncode == 0, res.stderr
    env = json.loads(res.stdout.splitlines()[0])
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG"}
    assert secret not in res.stdout and secret not in res.stderr


def test_parent_environ_is_not_readable_through_proc(monkeypatch, protections):
    if not _on(protections, "drop_privileges") and not _on(protections, "pid_namespace"):
        pytest.skip("same uid and PID namespace as the evaluator: /proc/<ppid>/environ is readable")
    secret = secrets.token_hex(16)
    monkeypatch.setenv("DRAFTEDIT_TEST_SECRET", secret)
    code = f"""
import os
try:
    print(open('/proc/{os.getpid()}/environ', 'rb').read().decode(errors='replace'))
except OSError as exc:
    print('blocked', type(exc).__name__)
"""
    res = run_python(code, limits=STRICT)
    assert secret not in res.stdout


def test_early_exit_cannot_fake_a_pass():
    for early in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit(0)\n"):
        outcome = run_tests(early + GOOD, ADD_TEST, "add", limits=STRICT)
        assert not outcome.passed, early
        assert outcome.result.returncode == 0, "the process itself exited with 0: only the token tells"
    inside = "def add(a, b):\n    import sys\n    sys.exit(0)\n"
    assert not run_tests(inside, ADD_TEST, "add", limits=STRICT).passed
    # Printing what a naive harness would look for does not help either.
    fake = "print('passed')\nprint('OK')\n" + "def add(a, b):\n    return 0\n"
    assert not run_tests(fake, ADD_TEST, "add", limits=STRICT).passed
    # The token goes out on a private copy of stdout: closing fd 1 neither fakes nor hides a result.
    closer = "import os\nos.close(1)\n"
    assert run_tests(closer + GOOD, ADD_TEST, "add", limits=STRICT).passed
    assert not run_tests(closer + "def add(a, b):\n    return 0\n", ADD_TEST, "add", limits=STRICT).passed


def test_output_is_capped_and_run_still_judged():
    flood = "import sys\nfor _ in range(2000):\n    sys.stdout.write('x' * 1000)\n" + GOOD
    outcome = run_tests(flood, ADD_TEST, "add", limits=STRICT)
    res = outcome.result
    assert res.output_truncated
    assert len(res.stdout) < STRICT.max_output_bytes + 5000  # head + tail, not 2 MB
    assert outcome.passed, "the token at the end survives truncation of the middle"


def test_network_is_unreachable(protections):
    if not _on(protections, "network_namespace"):
        pytest.skip(f"no network namespace on this platform: {protections.get('network_namespace')}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    thread.start()
    try:
        code = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    print('connected')\nexcept OSError as exc:\n    print('blocked', exc)"
        res = run_python(code, limits=STRICT)
        assert "blocked" in res.stdout and "connected" not in res.stdout
        assert not accepted
    finally:
        server.close()


def test_fallback_without_isolation_still_enforces_time_and_memory():
    lim = SandboxLimits(timeout_s=60.0, memory_mb=256, isolate=False, drop_privileges=False)
    res = run_python("while True: pass", limits=dataclasses.replace(lim, timeout_s=2.0))
    assert res.timed_out and res.returncode == -9
    assert res.protections["network_namespace"].startswith("off")
    assert res.protections["pid_namespace"].startswith("off")
    assert res.protections["hidden_fs"].startswith("off"), "the result says plainly that the host's files are visible"
    mem = run_python("x = bytearray(2 * 1024 ** 3)", limits=lim)
    assert "MemoryError" in mem.stderr
    assert run_tests(GOOD, ADD_TEST, "add", limits=lim).passed


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become an unprivileged user), setpriv and a system python")
def test_unprivileged_evaluator_is_contained_through_user_namespaces():
    """The non-root path: the evaluator runs as `nobody`; the sandbox must still contain the code."""
    blocker = _blocking_ancestor(os.path.join(tempfile.gettempdir(), "probe"))
    if blocker is not None:
        pytest.skip(f"nobody cannot reach the temporary folder {tempfile.gettempdir()} ({blocker} has no o+x)")
    folder = Path(tempfile.mkdtemp(prefix="draftedit-probe-"))  # pytest's tmp_path is private to root
    # nobody imports a world-readable copy of the sandbox: the checkout may sit in a private folder.
    for name in ("components/__init__.py", "components/sandbox/__init__.py", "components/sandbox/boot.py"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, folder / name)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    script = folder / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(folder)!r})
        from components.sandbox import SandboxLimits, run_python, run_tests
        lim = SandboxLimits(timeout_s=60.0, memory_mb=256, max_processes=8)
        good = run_tests({GOOD!r}, {ADD_TEST!r}, "add", limits=lim)
        early = run_tests("import sys\\nsys.exit(0)\\n" + {GOOD!r}, {ADD_TEST!r}, "add", limits=lim)
        loop = run_python("while True: pass", limits=SandboxLimits(timeout_s=2.0, memory_mb=256, max_processes=8))
        print(json.dumps({{"good": good.passed, "early": early.passed, "loop": loop.timed_out,
                           "protections": good.result.protections}}))
    """))
    try:
        probe = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I", str(script)],
            capture_output=True, text=True, timeout=300, cwd="/",
        )
    finally:
        shutil.rmtree(folder)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["good"] and not report["early"] and report["loop"]
    assert report["protections"]["drop_privileges"].startswith("off")
    if report["protections"].get("user_namespace") == "on":
        assert report["protections"]["network_namespace"] == "on"
        assert report["protections"]["readonly_fs"] == "on"


# What a checkout needs to run this file: the sandbox package, the shared fixtures and the pytest settings.
CHECKOUT_FILES = ("pyproject.toml", "components/__init__.py", "components/sandbox/__init__.py",
                  "components/sandbox/boot.py", "tests/conftest.py", "tests/test_sandbox.py")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/tmp"), reason="no /tmp to hold the checkout")
def test_sandbox_tests_pass_from_a_private_checkout_under_tmp():
    """A user's clone may sit in a private folder (mode 700, as `mktemp -d` makes) under /tmp, where the
    sandbox's private /tmp hides it and `nobody` cannot read it: the sandbox tests there still pass, and
    what that place rules out is skipped with its reason, never failed."""
    checkout = Path(tempfile.mkdtemp(prefix="draftedit-checkout-", dir="/tmp"))
    try:
        assert os.stat(checkout).st_mode & 0o777 == 0o700
        for name in CHECKOUT_FILES:
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, checkout / name)
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        env.pop("PYTEST_ADDOPTS", None)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_sandbox.py"], cwd=checkout,
                              env=env, capture_output=True, text=True, timeout=540)
    finally:
        shutil.rmtree(checkout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all(line.split(": ", 1)[-1].strip() for line in skipped), skipped
    assert any("the checkout lies under /tmp" in line for line in skipped), proc.stdout[-3000:]
