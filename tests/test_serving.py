"""The model server (components/serving.py) in-process: MLflow's request format, JSON errors without
internals, parameters checked by name, limits before any work, a deadline that stops decoding.
(tests/test_tracking_pyfunc.py runs `draftedit serve model` over real HTTP under load.)"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from components.batching import Job
from components.config import ConfigError, load_config
from components.serving import ModelServer, ServeConfig, create_app
from components.tracking.pyfunc import DraftEditModel
from pipeline_support import make_checkpoint
from serving_support import Forwards

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["12+7=", "sort 3 1 2 ->"]
FAST = {"preset": "speedy", "gen_length": 16}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", seed=0)
    m = DraftEditModel()
    m.load_context(SimpleNamespace(model_config={"checkpoint_path": str(ckpt), "preset": "quality"}, artifacts=None))
    return m


def client_for(model, **limits) -> tuple[TestClient, ModelServer]:
    server = ModelServer(model, dataclasses.replace(ServeConfig(), **limits))
    return TestClient(create_app(server)), server


def assert_clean_error(resp, status: int, *phrases: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error_code", "message"}
    for phrase in phrases:
        assert phrase in body["message"], body
    for leak in ("Traceback", 'File "', "/work", ".py", "site-packages"):
        assert leak not in resp.text, resp.text
    return body


def test_conf_defaults_load_and_bad_limits_name_the_key():
    from flows.serve import SERVE_CONFIG

    cfg = load_config(ServeConfig, SERVE_CONFIG)
    assert cfg == ServeConfig() and cfg.max_prompts >= 1 and cfg.request_timeout_s > 0
    with pytest.raises((ConfigError, ValueError), match="serve.max_prompts"):
        load_config(ServeConfig, None, ["max_prompts=0"])


def test_every_input_format_answers_like_predict(model):
    client, _ = client_for(model)
    expected = model.complete(PROMPTS, FAST)["completion"].tolist()
    bodies = [
        {"inputs": {"prompt": PROMPTS}},
        {"inputs": PROMPTS},
        {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in PROMPTS]}},
        {"dataframe_records": [{"prompt": p} for p in PROMPTS]},
        {"instances": PROMPTS},
    ]
    for body in bodies:
        resp = client.post("/invocations", json={**body, "params": FAST})
        assert resp.status_code == 200, (body, resp.text)
        rows = resp.json()["predictions"]
        assert [r["completion"] for r in rows] == expected
        assert set(rows[0]) == {"completion", "tokens", "forwards", "tpf"}
    assert client.get("/ping").status_code == 200


def test_malformed_requests_get_one_json_line_without_internals(model):
    client, _ = client_for(model)
    post = lambda **kw: client.post("/invocations", **kw)  # noqa: E731
    assert_clean_error(post(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "not valid JSON")
    assert_clean_error(post(json={"inputs": {"text": PROMPTS}}), 400, "'prompt'")
    assert_clean_error(post(json={"inputs": ["ok", ""]}), 400, "non-empty string", "[1]")
    assert_clean_error(post(json={"inputs": [1, 2]}), 400, "non-empty string")
    assert_clean_error(post(json={"inputz": PROMPTS}), 400, "'inputz'")
    assert_clean_error(post(json={"inputs": PROMPTS, "instances": PROMPTS}), 400, "exactly one")
    assert_clean_error(post(json={"inputs": PROMPTS, "params": [1]}), 400, "'params'")
    assert_clean_error(post(json=[1, 2]), 400, "JSON object")
    assert_clean_error(post(content=b"prompt=x", headers={"Content-Type": "text/plain"}), 415, "application/json")
    assert_clean_error(client.get("/nowhere"), 404)


def test_unknown_or_mistyped_parameters_are_rejected_by_name(model):
    client, _ = client_for(model)
    with Forwards(model) as forwards:
        body = assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": {"gen_lenght": 16}}),
                                  400, "'gen_lenght'", "gen_length")
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": {"gen_length": "16"}}),
                           400, "'gen_length'", "integer")
        assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": {"threshold": True}}),
                           400, "'threshold'")
        assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": {"preset": "turbo"}}),
                           400, "turbo")
        assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": {"threshold": 7.0}}),
                           400, "threshold")
    assert forwards.count == 0


def test_limits_are_enforced_before_any_decoding(model):
    client, _ = client_for(model, max_prompts=4, max_prompt_tokens=40, max_gen_length=32, max_body_bytes=4096)
    with Forwards(model) as forwards:
        too_many = assert_clean_error(client.post("/invocations", json={"inputs": ["1+1="] * 5}), 413, "5 prompts", "4")
        assert too_many["error_code"] == "REQUEST_TOO_LARGE"
        assert_clean_error(client.post("/invocations", json={"inputs": ["1+1="] * 2000}), 413)
        assert_clean_error(client.post("/invocations", json={"inputs": ["1 2 3 4 5 6 7 8 9 " * 20], "params": FAST}), 413, "tokens", "40")
        assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": {"gen_length": 64}}),
                           400, "gen_length 64", "32")
        # The preset's own gen_length (256) counts too when the request does not set one.
        assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS}), 400, "gen_length 256")
        big = json.dumps({"inputs": ["x" * 5000]}).encode()
        assert_clean_error(client.post("/invocations", content=big, headers={"Content-Type": "application/json"}),
                           413, "4096 bytes")
    assert forwards.count == 0
    assert client.post("/invocations", json={"inputs": PROMPTS, "params": FAST}).status_code == 200


def test_a_request_past_its_deadline_stops_decoding(model, monkeypatch):
    import components.batching as batching

    with Forwards(model) as full:
        model.complete(PROMPTS[:1], {"preset": "quality", "gen_length": 64})
    assert full.count > 2
    client, _ = client_for(model, request_timeout_s=1e-9)  # the deadline has passed before the batch starts
    with Forwards(model) as stopped:
        resp = client.post("/invocations", json={"inputs": PROMPTS[:1], "params": {"preset": "quality", "gen_length": 64}})
    body = assert_clean_error(resp, 504, "no answer within")
    assert body["error_code"] == "DEADLINE_EXCEEDED"
    assert stopped.count == 0, "no decoding for a request already late"

    # the deadline passes after the first forward (the clock the decoding thread reads jumps ahead)
    client, _ = client_for(model, request_timeout_s=600)
    with Forwards(model) as stopped:
        clock = SimpleNamespace(monotonic=lambda: time.monotonic() + (1e6 if stopped.count else 0))
        monkeypatch.setattr(batching, "time", clock)
        resp = client.post("/invocations", json={"inputs": PROMPTS[:1], "params": {"preset": "quality", "gen_length": 64}})
    body = assert_clean_error(resp, 504, "decoding was stopped")
    assert body["error_code"] == "DEADLINE_EXCEEDED"
    assert stopped.count == 1, "decoding stopped at the first check, after one forward"


def test_shutdown_stops_decoding_and_a_full_queue_answers_503(model):
    client, server = client_for(model, max_waiting=1, request_timeout_s=600)
    server.stopping.set()
    assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": FAST}), 503, "shutting down")
    server.stopping.clear()
    release, busy = threading.Event(), threading.Event()

    def hold(_row):  # a decoding in progress: the decoding thread waits here before its forward
        busy.set()
        release.wait(120)
        return False

    cfg = model.preset_config("speedy", gen_length=8, temperature=0.5, seed=0)  # sampled: a batch of its own
    held = server.batcher.submit(Job([model.tokenizer.encode("hold")], cfg, float("inf"), row_done=hold))
    assert busy.wait(120)
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(client.post("/invocations", json={"inputs": PROMPTS, "params": FAST})))
    waiting.start()
    try:
        deadline = time.monotonic() + 60
        while server.batcher.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.batcher.waiting == 1
        assert_clean_error(client.post("/invocations", json={"inputs": PROMPTS, "params": FAST}), 503, "busy")
    finally:
        server.stopping.set()  # shutting down: the held decoding stops at its next step
        release.set()
        waiting.join(timeout=120)
    assert all(server.batcher.wait(held).stopped)
    assert answers and answers[0].status_code == 503 and "shutting down" in answers[0].text
    server.stopping.clear()
    assert client.post("/invocations", json={"inputs": PROMPTS, "params": FAST}).status_code == 200
