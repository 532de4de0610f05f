"""The checkpoint as an MLflow pyfunc: predict equals direct decoding with the chosen preset; it serves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from components.tracking import get_or_create_experiment, register_model
from components.tracking.pyfunc import DraftEditModel, log_pyfunc_model
from pipeline_support import make_checkpoint

PROMPTS = ["12+7=", "sort 3 1 2 ->"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", seed=0)


@pytest.fixture
def logged(mlflow_uri, tmp_path, checkpoint):
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient(mlflow_uri)
    exp = get_or_create_experiment(client, "pyfunc", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        info = log_pyfunc_model(checkpoint, preset="quality")
        mlflow.log_metric("eval/score", 0.5)
    yield client, run.info.run_id, info
    mlflow.set_tracking_uri(None)


def direct_decode(checkpoint, prompts, preset, **overrides):
    from components.presets import load_decode_config
    from model import DiffusionLM, generate
    from model.tokenizer import load_tokenizer

    lm = DiffusionLM.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in prompts]
    result = generate(lm, ids, load_decode_config(preset, **overrides))
    return [tok.decode(s, skip_special_tokens=True) for s in result.sequences], result


def test_predict_equals_direct_decoding_with_the_chosen_preset(logged, checkpoint):
    _, _, info = logged
    model = mlflow.pyfunc.load_model(info.model_uri)
    for preset in ("speedy", "quality"):
        out = model.predict(pd.DataFrame({"prompt": PROMPTS}), params={"preset": preset, "gen_length": 16})
        texts, result = direct_decode(checkpoint, PROMPTS, preset, gen_length=16)
        assert list(out.columns) == ["completion", "tokens", "forwards", "tpf"]
        assert out["completion"].tolist() == texts
        assert out["forwards"].tolist() == result.forwards
        assert out["tokens"].tolist() == [len(s) for s in result.sequences]


def test_default_preset_and_dict_input(logged, checkpoint):
    _, _, info = logged
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict({"prompt": PROMPTS[:1]}, params={"gen_length": 16})
    texts, _ = direct_decode(checkpoint, PROMPTS[:1], "quality", gen_length=16)  # the logged default
    assert out["completion"].tolist() == texts


def test_bad_requests_are_rejected(logged):
    _, _, info = logged
    python_model = mlflow.pyfunc.load_model(info.model_uri).unwrap_python_model()
    assert isinstance(python_model, DraftEditModel)
    with pytest.raises(ValueError, match="unknown parameter 'beam_size'"):
        python_model.decode_config({"beam_size": 4})
    with pytest.raises(ValueError, match="'gen_length' must be an integer"):
        python_model.decode_config({"gen_length": "16"})
    with pytest.raises(Exception, match="unknown decoding preset 'turbo'"):
        python_model.decode_config({"preset": "turbo"})
    with pytest.raises(ValueError, match="non-empty string"):
        python_model.predict(None, [""])
    with pytest.raises(ValueError, match="'prompt' column"):
        python_model.predict(None, pd.DataFrame({"a": ["x"], "b": ["y"]}))


def test_log_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, mlflow_uri):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        log_pyfunc_model(tmp_path, preset="quality")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in open(f"/proc/{pid}/status", encoding="utf-8"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _post(port: int, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_serve_model_answers_a_mixed_load_with_bounded_memory_and_stops_on_sigterm(logged, checkpoint, tmp_path):
    """`draftedit serve model` over loopback HTTP: concurrent valid, malformed and oversized requests
    all get their answer, the server's memory stays bounded, and SIGTERM leaves no process behind."""
    from flows.processes import alive, descendants

    client, run_id, info = logged
    register_model(client, "served", info.model_uri, run_id, metric="eval/score")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "model", f"tracking.uri={client.tracking_uri}",
         "tracking.registered_model=served", f"output_dir={tmp_path / 'out'}", "--port", str(port),
         "serve.max_prompts=8", "serve.max_gen_length=64", "serve.max_waiting=64", "serve.request_timeout_s=600"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(REPO),
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "draftedit serve model did not start"
                time.sleep(1)
        valid = json.dumps({"inputs": {"prompt": PROMPTS}, "params": {"preset": "speedy", "gen_length": 16}}).encode()
        texts, _ = direct_decode(checkpoint, PROMPTS, "speedy", gen_length=16)
        status, warm = _post(port, valid)  # the first answer: every lazy import and allocation done
        assert status == 200 and [row["completion"] for row in warm["predictions"]] == texts
        baseline = _memory_kib(proc.pid)["VmRSS"]
        requests = [(valid, 200)] * 24 + [
            (b"{oops", 400),
            (json.dumps({"inputs": PROMPTS, "params": {"gen_lenght": 16}}).encode(), 400),
            (json.dumps({"inputs": ["1+1="] * 2000}).encode(), 413),
            (json.dumps({"inputs": ["1 2 3 " * 400], "params": {"gen_length": 16}}).encode(), 413),
            (json.dumps({"inputs": PROMPTS, "params": {"gen_length": 100000}}).encode(), 400),
        ] * 4
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(lambda item: _post(port, item[0]), requests))
        for (_, want), (status, body) in zip(requests, answers):
            assert status == want, body
            if status == 200:
                assert [row["completion"] for row in body["predictions"]] == texts
            else:
                assert set(body) == {"error_code", "message"} and "Traceback" not in body["message"]
        grown_mib = (_memory_kib(proc.pid)["VmHWM"] - baseline) / 1024
        assert grown_mib < 300, f"the server grew by {grown_mib:.0f} MiB under load"

        tree = [proc.pid, *descendants(proc.pid)]
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in tree if alive(p)] == []
    finally:
        if proc.poll() is None:  # only signal a group we know is still ours
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_defining_the_pyfunc_model_warns_nothing():
    """MLflow checks predict's type hints when the class is defined; the hint it accepts leaves nothing to
    advise. MLflow's own imports warn before ours, so the check starts after them."""
    code = ("import warnings, mlflow.pyfunc\nwarnings.simplefilter('error')\n"
            "import components.tracking.pyfunc_model")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
