"""SIGKILL a real `draftedit run STAGE` (CPT and RL mid-training, evaluate mid-evaluation) or `draftedit
pipeline` (while registering the model), rerun the same command (or `--resume`), and check that the stage
continues inside the same MLflow run: step counter and metric history continuous, the dead run marked
FAILED with its cause in MLflow and Crashed in Prefect, and Prefect's ephemeral server not left behind.

Each child runs `flows.cli` behind a small wrapper that, when DRAFTEDIT_TEST_BLOCK names a point, writes a
marker file there and waits to be killed: the test kills at a known step, never after a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from components.tracking import ALIAS_CHAMPION, ALIAS_LATEST, TAG_FAILURE, TAG_INTERRUPTED, TAG_STAGE
from components.tracking.liveness import TAG_RESUMED
from train_support import REPO, TINY_MODEL, prepare_tiny_data

WRAPPER = r"""
import os, pathlib, sys, time

block, marker = os.environ.get("DRAFTEDIT_TEST_BLOCK", ""), pathlib.Path(os.environ.get("DRAFTEDIT_TEST_MARKER", "-"))

def wait_to_be_killed():
    marker.write_text(str(os.getpid()))
    while True:
        time.sleep(1)

point, _, value = block.partition("=")
if point == "train_step":
    import lightning as L
    import components.training as training

    class Block(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(value):
                wait_to_be_killed()

    original_train = training.run_training
    training.run_training = lambda cfg, out, **kw: original_train(
        cfg, out, **{**kw, "callbacks": [*(kw.get("callbacks") or []), Block()]})
elif point == "rl_step":
    from components.rl.module import EBPOModule

    original_end = EBPOModule.on_train_batch_end

    def on_train_batch_end(self, *args):
        original_end(self, *args)
        if self.rl_steps == int(value):
            wait_to_be_killed()

    EBPOModule.on_train_batch_end = on_train_batch_end
elif point == "evaluate":
    import components.evaluate.suite as suite  # run_eval's own reference, the one the stage calls

    suite.evaluate_suite = lambda *a, **kw: wait_to_be_killed()
elif point == "register":  # the model version exists, its aliases are not moved yet
    import mlflow

    original_create = mlflow.MlflowClient.create_model_version

    def create_model_version(self, *args, **kwargs):
        original_create(self, *args, **kwargs)
        wait_to_be_killed()

    mlflow.MlflowClient.create_model_version = create_model_version

elif point == "fake_stage":  # the pipeline's stand-in stages (tests/pipeline_support.py)
    import pipeline_support

    original_fake = pipeline_support.fake_train

    def fake_train(cfg, out_dir, inputs):
        if cfg.stage == value:
            wait_to_be_killed()
        return original_fake(cfg, out_dir, inputs)

    pipeline_support.fake_train = fake_train
if os.environ.get("DRAFTEDIT_TEST_FAKES"):
    import pipeline_support

    class _Patch:
        setitem = staticmethod(lambda mapping, key, value: mapping.__setitem__(key, value))

    pipeline_support.install_fakes(_Patch)

from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("crash-data"))


@pytest.fixture
def prefect_api(prefect_harness, monkeypatch) -> str:
    """The session's Prefect server, for the children and the in-process reruns (so none starts its own)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("DRAFTEDIT_DEBUG", "1")  # a failing rerun shows its traceback
    return url


class Command:
    """One `draftedit ...` command line, started as often as needed (killed at a point, or run to the end)."""

    def __init__(self, tmp_path: Path, mlflow_uri: str, prefect_api: str, argv: list[str], **env: str):
        self.tmp, self.uri, self.args = tmp_path, mlflow_uri, argv
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
                    "PREFECT_API_URL": prefect_api, **env}
        self.client = mlflow.MlflowClient(tracking_uri=mlflow_uri)

    def kill_at(self, point: str, timeout: float = 240) -> None:
        """Start the command, wait until it reaches `point`, SIGKILL it."""
        marker = self.tmp / f"reached-{point.replace('=', '-')}-{time.monotonic_ns()}"
        env = {**self.env, "DRAFTEDIT_TEST_BLOCK": point, "DRAFTEDIT_TEST_MARKER": str(marker)}
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *self.args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                output = proc.stdout.read()[-3000:]
                pytest.fail(f"the run ended (rc {proc.returncode}) before reaching {point}:\n{output}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the run did not reach {point} within {timeout} s")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def finish(self, *extra: str) -> None:
        """Run the same command (plus `extra` arguments) to the end, in a child like the killed one (run in
        this process, the stage would leave state behind that breaks later tests forking this process)."""
        env = {k: v for k, v in self.env.items() if k != "DRAFTEDIT_TEST_BLOCK"}
        done = subprocess.run([sys.executable, "-c", WRAPPER, *self.args, *extra], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    def only_run(self, stage: str, experiment: str = "crash"):
        runs = self.client.search_runs([self.client.get_experiment_by_name(experiment).experiment_id],
                                       filter_string=f"tags.`{TAG_STAGE}` = '{stage}'")
        assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
        return runs[0]

    def sweep(self, experiment: str = "crash") -> None:
        """What any command does first when it opens the store."""
        from flows.runner import tracking_client

        tracking_client(self.uri, experiment, str(self.tmp / "out"))


def Stage(tmp_path: Path, mlflow_uri: str, prefect_api: str, args: list[str]) -> Command:
    """`draftedit run STAGE ...` writing under tmp_path/out, tracked in experiment `crash`."""
    return Command(tmp_path, mlflow_uri, prefect_api,
                   ["run", *args, "--set", f"output_dir={tmp_path / 'out'}", "--set", f"tracking.uri={mlflow_uri}",
                    "--set", "tracking.experiment=crash"])


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _assert_swept(stage: Command, run_id: str) -> None:
    assert stage.client.get_run(run_id).info.status == "RUNNING"  # as the kill left it
    stage.sweep()
    dead = stage.client.get_run(run_id)
    assert dead.info.status == "FAILED" and dead.info.end_time is not None
    assert "died without ending the run" in dead.data.tags[TAG_FAILURE]
    assert dead.data.tags[TAG_INTERRUPTED] == "true"
    from prefect import get_client

    with get_client(sync_client=True) as prefect:  # the stage's Prefect flow run says so too
        state = prefect.read_flow_run(dead.data.tags["prefect.flow_run_id"]).state
    assert state.is_crashed() and "died without ending the run" in state.message


@pytest.mark.slow  # two `draftedit` processes (~10 s of imports each); .ci/run runs it
def test_cpt_killed_mid_training_continues_in_the_same_run(prepared, tmp_path, mlflow_uri, prefect_api):
    overrides = [*TINY_MODEL, "trainer.max_steps=16", "trainer.checkpoint_every_steps=4", "trainer.batch_size=4",
                 "trainer.block_length=8", "trainer.log_every_steps=1", "trainer.val_every_steps=1000",
                 "trainer.num_threads=1", "optim.warmup_steps=2", "data.val_fraction=0.0"]
    stage = Stage(tmp_path, mlflow_uri, prefect_api,
                  ["cpt", "--config", "conf/train/cpt.yaml", "--input", f"data={prepared.root}", *overrides])
    stage.kill_at("train_step=10")  # last checkpoint: step 8; steps 9-10 were logged and will be replayed
    killed = stage.only_run("cpt")
    folder = tmp_path / "out" / "stages" / "cpt" / killed.info.run_id
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    _assert_swept(stage, killed.info.run_id)

    stage.finish()
    run = stage.only_run("cpt")  # one run: the killed one, continued
    assert run.info.run_id == killed.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags[TAG_RESUMED] == "1"
    assert run.data.metrics["train/resumed_from_step"] == 8 and run.data.metrics["train/steps"] == 16
    steps = _steps(stage.client, run.info.run_id, "train/loss")
    assert len(steps) >= 16 and steps == list(range(steps[0], steps[-1] + 1))  # every step once: none lost or doubled
    assert (folder / "model" / "config.json").is_file()  # the same folder, finished


@pytest.mark.slow  # two `draftedit` processes (~10 s of imports each); .ci/run runs it
def test_rl_killed_mid_training_continues_in_the_same_run(tmp_path, mlflow_uri, prefect_api):
    from pipeline_support import make_checkpoint

    model = make_checkpoint(tmp_path / "model")
    overrides = ["max_steps=5", "max_minutes=0", "checkpoint_every_steps=2", "prompts.family=sum",
                 "prompts.params={}", "prompts.train_size=16", "prompts.eval_size=4", "rollout.prompts_per_step=2",
                 "rollout.group_size=4", "rollout.gen_length=8", "rollout.decode.overrides.block_length=4", "eval.every_steps=2",
                 "optim.inner_steps=1", "trainer.num_threads=1",
                 'rewards=[{name: format, params: {pattern: ".*[0-9].*", require_eos: false}}]']
    stage = Stage(tmp_path, mlflow_uri, prefect_api,
                  ["rl", "--config", "conf/rl/default.yaml", "--input", f"checkpoint={model}", *overrides])
    stage.kill_at("rl_step=3")  # state saved at step 2
    killed = stage.only_run("rl")
    _assert_swept(stage, killed.info.run_id)

    stage.finish()
    run = stage.only_run("rl")  # one run: the killed one, continued
    assert run.info.run_id == killed.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rl/resumed_from_step"] == 2 and run.data.metrics["rl/steps"] == 5
    assert _steps(stage.client, run.info.run_id, "rl/reward_mean") == [1, 2, 3, 4, 5]
    assert _steps(stage.client, run.info.run_id, "rl_eval/accuracy") == [0, 2, 4, 5]


@pytest.mark.slow  # two `draftedit` processes (~10 s of imports each); .ci/run runs it
def test_evaluate_killed_while_evaluating_continues_in_the_same_run(tmp_path, mlflow_uri, prefect_api):
    from pipeline_support import make_checkpoint

    model = make_checkpoint(tmp_path / "model")
    stage = Stage(tmp_path, mlflow_uri, prefect_api,
                  ["evaluate", "--config", "conf/eval/default.yaml", "--input", f"checkpoint={model}", "--register",
                   "--set", "tracking.log_checkpoints=false", "tasks=[sum]", "limit=2", "presets=[]",
                   "editing_ablation=false"])
    stage.kill_at("evaluate")
    killed = stage.only_run("evaluate")
    _assert_swept(stage, killed.info.run_id)

    stage.finish()
    run = stage.only_run("evaluate")  # one run: the killed one, continued
    assert run.info.run_id == killed.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags[TAG_RESUMED] == "1"
    assert "eval/score" in run.data.metrics
    versions = stage.client.search_model_versions("name = 'draftedit'")
    assert [v.run_id for v in versions] == [run.info.run_id]


def test_the_ephemeral_prefect_server_dies_with_a_killed_parent(tmp_path):
    """Without a Prefect API URL, the server `draftedit run` starts must not outlive a SIGKILLed parent.

    Prefect's own launch is kept (its Popen call, through start_ephemeral_server); only the uvicorn
    command is replaced by a sleeping child, so the test does not wait for a real server to boot."""
    code = ("import subprocess, sys, time\n"
            "from prefect.server.api.server import SubprocessASGIServer\n"
            "SubprocessASGIServer._run_uvicorn_command = lambda self: subprocess.Popen(\n"
            "    [sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "def start(self, timeout=None):\n"
            "    self.server_process, self.running = self._run_uvicorn_command(), True\n"
            "SubprocessASGIServer.start = start\n"
            "from flows.prefect_server import start_ephemeral_server\n"
            "print(start_ephemeral_server().server_process.pid, flush=True)\n"
            "time.sleep(600)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)})
    (tmp_path / "prefect").mkdir()
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    from components.tracking.liveness import process_start_time

    assert process_start_time(server_pid) is not None
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 120
    while process_start_time(server_pid) is not None:  # None: gone (or a zombie)
        assert time.monotonic() < deadline, f"the Prefect server {server_pid} outlived its killed parent"
        time.sleep(0.05)


@pytest.mark.slow  # two `draftedit` processes (~10 s of imports each); .ci/run runs it
def test_a_pipeline_killed_while_registering_resumes_in_the_same_runs(tmp_path, mlflow_uri, prefect_api):
    """`draftedit pipeline` SIGKILLed while its evaluate stage registers the model (the version created, the
    aliases not moved); `--resume <parent>` reuses the finished stages, continues the evaluate stage's own run
    and registers the model once: the version of the killed attempt, now holding the aliases."""
    from pipeline_support import write_pipeline

    config = write_pipeline(tmp_path, mlflow_uri)
    fewer = [f"stages.{name}.enabled=false" for name in ("cpt", "quantize", "benchmark")]  # faster, same logic
    pipeline = Command(tmp_path, mlflow_uri, prefect_api, ["pipeline", "--preset", str(config), *fewer],
                       DRAFTEDIT_TEST_FAKES="1")
    pipeline.kill_at("register")
    parent, evaluate = pipeline.only_run("pipeline", "test"), pipeline.only_run("evaluate", "test")
    rl = pipeline.only_run("rl", "test")
    assert parent.info.status == evaluate.info.status == "RUNNING" and rl.info.status == "FINISHED"

    pipeline.finish("--resume", parent.info.run_id)
    resumed = pipeline.only_run("pipeline", "test")
    assert resumed.info.status == "FINISHED" and resumed.data.tags[TAG_RESUMED] == "1"
    again = pipeline.only_run("evaluate", "test")  # one evaluate run: the interrupted one, continued
    assert again.info.run_id == evaluate.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags[TAG_RESUMED] == "1"
    assert pipeline.only_run("rl", "test").info.run_id == rl.info.run_id  # reused, not rerun
    versions = pipeline.client.search_model_versions("name = 'draftedit'")
    assert [v.run_id for v in versions] == [again.info.run_id]  # registered once
    for alias in (ALIAS_LATEST, ALIAS_CHAMPION):
        assert pipeline.client.get_model_version_by_alias("draftedit", alias).version == versions[0].version
    logged = pipeline.client.search_logged_models([again.info.experiment_id],
                                                  filter_string=f"source_run_id = '{again.info.run_id}'")
    assert len(logged) == 1 and versions[0].source == f"models:/{logged[0].model_id}"  # the model logged once
