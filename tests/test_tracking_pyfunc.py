"""The checkpoint as an MLflow pyfunc: predict equals direct decoding with the chosen preset; it serves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request

import mlflow
import pandas as pd
import pytest

from components.tracking import get_or_create_experiment, register_model
from components.tracking.pyfunc import DraftEditModel, log_pyfunc_model
from pipeline_support import make_checkpoint

PROMPTS = ["12+7=", "sort 3 1 2 ->"]


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
    from components.decoding import load_decode_config
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
    with pytest.raises(ValueError, match="unknown decoding params"):
        python_model.decode_config({"beam_size": 4})
    with pytest.raises(Exception, match="unknown decoding preset 'turbo'"):
        python_model.decode_config({"preset": "turbo"})
    with pytest.raises(ValueError, match="non-empty string"):
        python_model.predict(None, [""])
    with pytest.raises(ValueError, match="'prompt' column"):
        python_model.predict(None, pd.DataFrame({"a": ["x"], "b": ["y"]}))


def test_log_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, mlflow_uri):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        log_pyfunc_model(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers(logged, checkpoint, tmp_path):
    """`mlflow models serve` on the registered champion answers /invocations with the same text."""
    client, run_id, info = logged
    register_model(client, "served", info.model_uri, run_id, metric="eval/score")
    port = free_port()
    from flows.serve import model_serve_command, serve_env

    proc = subprocess.Popen(
        model_serve_command("models:/served@champion", "127.0.0.1", port),
        env=serve_env(client.tracking_uri), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(1)
        body = json.dumps({"inputs": {"prompt": PROMPTS}, "params": {"preset": "speedy", "gen_length": 16}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
        texts, _ = direct_decode(checkpoint, PROMPTS, "speedy", gen_length=16)
        assert [row["completion"] for row in answer["predictions"]] == texts
    finally:
        if proc.poll() is None:  # only signal a group we know is still ours
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
