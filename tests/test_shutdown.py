"""SIGTERM and Ctrl-C stop every process a long-running command started, however deep.

Each test takes the process tree before the signal and looks for survivors after it. `draftedit
serve model` is covered by tests/test_tracking_pyfunc.py (it needs a registered model).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.processes import alive, descendants

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PYTHONUNBUFFERED="1")
    env.pop("PREFECT_API_URL", None)  # each command starts (and must stop) its own Prefect server
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(REPO), start_new_session=True)


def wait_for_line(proc: subprocess.Popen, marker: str, seen: list[str]) -> None:
    """Read the command's output until a line containing `marker` (fails if it exits first)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return
    pytest.fail(f"exited with {proc.wait()} before printing {marker!r}:\n{''.join(seen)[-3000:]}")


def signal_and_find_survivors(proc: subprocess.Popen, sig: int, expect_children: int) -> list[str]:
    """Send `sig` to the command; returns the command lines of its processes still alive afterwards."""
    tree = [proc.pid, *descendants(proc.pid)]
    assert len(tree) > expect_children, f"expected more than {expect_children} children, found {tree}"
    names = {}
    for pid in tree:
        try:
            names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            names[pid] = "?"
    os.kill(proc.pid, sig)
    try:
        proc.communicate(timeout=90)  # reads the rest of the output, so a full pipe blocks nobody
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"{p}: {names[p]}" for p in tree if alive(p)]


def kill_group(proc: subprocess.Popen) -> None:
    """Test clean-up only: the command's own session, if the command failed the test."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_guard_stops_a_deep_tree_even_processes_that_left_the_group(sig, tmp_path):
    """A child in its own session, a grandchild, and a daemon that double-forked and setsid'ed away
    (re-parented to the guarded process, its subreaper): all stop when the guarded process is signalled."""
    script = tmp_path / "tree.py"
    script.write_text(textwrap.dedent(f"""
        import os, subprocess, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from flows.processes import guard_process_tree

        DAEMON = "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    open({str(tmp_path / 'daemon.pid')!r}, 'w').write(str(os.getpid()))\\n    time.sleep(600)\\n"
        CHILD = f"import subprocess, sys, time\\nsubprocess.Popen([sys.executable, '-c', {{DAEMON!r}}])\\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\\ntime.sleep(600)"
        try:
            with guard_process_tree(grace=5):
                subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
                print("started", flush=True)
                time.sleep(600)
        except KeyboardInterrupt:
            print("stopped", flush=True)
            sys.exit(130)
    """))
    proc = start([sys.executable, str(script)], tmp_path)
    try:
        wait_for_line(proc, "started", [])
        daemon_file = tmp_path / "daemon.pid"
        deadline = time.monotonic() + 60
        while not (daemon_file.exists() and daemon_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        daemon = int(daemon_file.read_text())
        assert daemon in descendants(proc.pid), "the orphaned daemon was adopted by the guarded process"
        assert signal_and_find_survivors(proc, sig, expect_children=2) == []  # child, sleeper, daemon
        assert proc.returncode == 130
    finally:
        kill_group(proc)


@pytest.mark.slow  # starts real servers: 30-70 s on two cores
def test_ui_sigterm_stops_mlflow_prefect_and_all_their_workers(tmp_path, mlflow_uri):
    proc = start([sys.executable, "-m", "flows.cli", "ui", f"tracking.uri={mlflow_uri}", f"output_dir={tmp_path}",
                  "--mlflow-port", str(free_port()), "--prefect-port", str(free_port()), "--timeout", "240"], tmp_path)
    try:
        wait_for_line(proc, "Ctrl-C stops both", [])
        assert signal_and_find_survivors(proc, signal.SIGTERM, expect_children=4) == []
    finally:
        kill_group(proc)


@pytest.mark.slow  # starts real servers: 30-70 s on two cores
def test_pipeline_sigterm_stops_its_ephemeral_prefect_server(tmp_path, mlflow_uri):
    """`draftedit pipeline` (preset fast) stopped during its first stage: Prefect's own server goes too."""
    proc = start([sys.executable, "-m", "flows.cli", "pipeline", "--preset", "fast", f"tracking.uri={mlflow_uri}",
                  f"output_dir={tmp_path / 'out'}"], tmp_path)
    try:
        seen: list[str] = []
        wait_for_line(proc, "stage 1/", seen)
        deadline = time.monotonic() + 60
        while not descendants(proc.pid) and time.monotonic() < deadline:  # Prefect's server, started lazily
            time.sleep(0.1)
        survivors = signal_and_find_survivors(proc, signal.SIGTERM, expect_children=0)
        assert survivors == [], "".join(seen)
        assert proc.returncode == 130
    finally:
        kill_group(proc)


@pytest.mark.slow  # starts real servers: 30-70 s on two cores
def test_serve_reeval_sigterm_stops_its_prefect_server_and_runner(tmp_path, mlflow_uri):
    import mlflow
    import yaml

    from components.tracking import get_or_create_experiment, register_model
    from components.tracking.pyfunc import log_pyfunc_model
    from pipeline_support import make_checkpoint

    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        ckpt = make_checkpoint(tmp_path / "ckpt", seed=0)
        with mlflow.start_run(experiment_id=get_or_create_experiment(client, "reeval", (tmp_path / "a").as_uri())) as run:
            info = log_pyfunc_model(ckpt, preset="quality")
            mlflow.log_metric("eval/score", 0.5)
        register_model(client, "dm", info.model_uri, run.info.run_id, "eval/score", checkpoint_uri=str(ckpt))
    finally:
        mlflow.set_tracking_uri(None)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "shutdown", "output_dir": str(tmp_path / "out"), "init_checkpoint": str(ckpt),
        "tracking": {"uri": mlflow_uri, "experiment": "reeval", "registered_model": "dm"},
        "stages": {"evaluate": {"config": "eval/default.yaml", "overrides": ["tasks=[sum]", "limit=2"]},
                   **{s: {"enabled": False} for s in ("data_prep", "cpt", "sft", "rl", "quantize", "benchmark")}},
        "reeval": {"deployment": "nightly"},
    }))
    proc = start([sys.executable, "-m", "flows.cli", "serve", "reeval", "--preset", str(config),
                  "--prefect-port", str(free_port())], tmp_path)
    try:
        seen: list[str] = []
        wait_for_line(proc, "started a Prefect server", seen)
        wait_for_line(proc, "serv", seen)  # Prefect's runner: "... is being served and polling ..."
        assert signal_and_find_survivors(proc, signal.SIGTERM, expect_children=1) == [], "".join(seen)
    finally:
        kill_group(proc)
