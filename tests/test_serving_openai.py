"""The model server's OpenAI routes (components/serving.py, components/openai_api.py) in-process: answers
equal to the decoder's, extra fields checked like /invocations params, OpenAI's error shape, server-sent
events per finished block, a client that leaves stops its decoding, and concurrent requests batched with
every answer what it would be alone. (tests/test_serving_clients.py drives the server with the `openai`
package and lm-eval.)"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from components.batching import Job
from components.openai_api import StopText
from components.presets import EDITING_OFF
from components.serving import create_app
from serving_support import MODEL_NAME, Forwards, live_server, load_model, server_for, wait_until

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["12+7=", "sort 3 1 2 ->"]
FAST = {"preset": "speedy", "max_tokens": 16}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module", autouse=True)
def no_thread_left():
    """After these tests no decoding or server thread is left running."""
    yield
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("draftedit-")])


def client_for(model, **limits):
    server = server_for(model, **limits)
    return TestClient(create_app(server)), server


def solo(model, prompt_ids, preset="speedy", **fields):
    """(text, tokens, forwards, edits) of one prompt decoded alone, straight from the decoder."""
    res = model.generate([prompt_ids], model.preset_config(preset, **fields))
    seq = res.sequences[0]
    return model.tokenizer.decode(seq, skip_special_tokens=True), len(seq), res.forwards[0], res.edits[0]


def assert_openai_error(resp, status: int, param, *phrases: str, code=None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    for phrase in phrases:
        assert phrase in body["error"]["message"], body
    for leak in ("Traceback", 'File "', "/work", ".py", "site-packages"):
        assert leak not in resp.text, resp.text
    return body["error"]


def events(resp) -> list:
    """The data of each server-sent event; the last must be [DONE]."""
    data = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", data[-3:]
    return [json.loads(d) for d in data[:-1]]


# ------------------------------------------------------------------------------------------ answers
def test_completions_answer_what_the_decoder_gives(model):
    client, _ = client_for(model)
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL_NAME
    resp = client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": PROMPTS, **FAST})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ids = [model.tokenizer.encode(p) for p in PROMPTS]  # a completions prompt is not chat-templated
    expected = [solo(model, i, gen_length=16) for i in ids]
    assert body["object"] == "text_completion" and body["model"] == MODEL_NAME
    assert [c["text"] for c in body["choices"]] == [e[0] for e in expected]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": sum(map(len, ids)), "completion_tokens": sum(e[1] for e in expected),
                             "total_tokens": sum(map(len, ids)) + sum(e[1] for e in expected)}
    figures = body["draftedit"]
    assert figures["forwards"] == sum(e[2] for e in expected) and figures["edits"] == sum(e[3] for e in expected)
    assert figures["tokens_per_forward"] == pytest.approx(sum(e[1] for e in expected) / figures["forwards"])
    assert figures["preset"] == "speedy"
    # the same prompt as token ids answers the same
    by_ids = client.post("/v1/completions", json={"prompt": ids[0], **FAST}).json()
    assert by_ids["choices"][0]["text"] == expected[0][0]


def test_chat_wraps_the_messages_in_the_template_and_n_repeats(model):
    client, _ = client_for(model)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "12+7="}]}]
    resp = client.post("/v1/chat/completions", json={"messages": messages, "n": 2, **FAST})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ids = model.tokenizer.encode(model.tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12+7="}]))
    text, tokens, _, _ = solo(model, ids, gen_length=16)
    assert body["object"] == "chat.completion"
    assert [c["message"] for c in body["choices"]] == [{"role": "assistant", "content": text}] * 2
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == 2 * tokens
    assert {c["finish_reason"] for c in body["choices"]} <= {"stop", "length"}


def test_extra_fields_set_the_decoder(model):
    client, _ = client_for(model)
    ids = model.tokenizer.encode(PROMPTS[0])
    for extra, fields in [({"editing": False}, {"editing_threshold": EDITING_OFF}),
                          ({"threshold": 0.3, "editing_threshold": 0.6}, {"threshold": 0.3, "editing_threshold": 0.6}),
                          ({"block_length": 8}, {"block_length": 8}),
                          ({"preset": "quality"}, {})]:
        preset = extra.get("preset", "speedy")
        body = client.post("/v1/completions", json={"prompt": PROMPTS[0], **FAST, **extra}).json()
        text, _, forwards, edits = solo(model, ids, preset, gen_length=16, **fields)
        assert body["choices"][0]["text"] == text and body["draftedit"]["forwards"] == forwards, extra
        assert body["draftedit"]["edits"] == edits and body["draftedit"]["preset"] == preset
    # editing off against a setting that edits: the figures say so
    off = client.post("/v1/completions", json={"prompt": PROMPTS[0], **FAST, "editing": False}).json()
    assert off["draftedit"]["edits"] == 0


def test_stop_strings_cut_the_text_and_end_the_decoding(model):
    client, _ = client_for(model)
    body = {"prompt": PROMPTS[0], "preset": "quality", "max_tokens": 64, "block_length": 8}
    full = client.post("/v1/completions", json=body).json()
    text = full["choices"][0]["text"]
    assert len(text) > 12, "the model writes enough text to cut"
    stop = text[10:12]
    cut = client.post("/v1/completions", json={**body, "stop": [stop, "never-written"]}).json()
    assert cut["choices"][0]["text"] == text[:text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["draftedit"]["forwards"] < full["draftedit"]["forwards"], "decoding stopped at the stop string"


def test_stop_text_holds_back_what_may_begin_a_stop_string():
    st = StopText(["END"])
    assert st.feed("abc E") == "abc "  # "E" may begin "END"
    assert st.feed("abc EN") == ""
    assert st.feed("abc ENx") == "ENx"
    assert st.feed("abc ENxyz END more") == "yz " and st.stopped and st.sent == "abc ENxyz "
    assert StopText([]).feed("caf\ufffd") == "caf"  # half a character waits for the next block
    assert StopText(["zz"]).feed("a z", final=True) == "a z"
    redecoded = StopText([])
    redecoded.feed("ab")
    assert redecoded.feed("xbc", final=True) == "" and redecoded.sent == "xbc"  # the answer's text is the last form


# ------------------------------------------------------------------------------------------- errors
def test_bad_requests_answer_in_openai_error_shape_without_decoding(model):
    client, _ = client_for(model, max_gen_length=32, max_prompt_tokens=20, max_prompts=4, max_body_bytes=4096)
    post = lambda path="/v1/completions", **kw: client.post(path, **kw)  # noqa: E731
    with Forwards(model) as forwards:
        assert_openai_error(post(content=b"{not json", headers={"Content-Type": "application/json"}), 400, None,
                            "not valid JSON", code="invalid_json")
        assert_openai_error(post(json=[1]), 400, None, "JSON object")
        assert_openai_error(post(json={"max_tokens": 4}), 400, "prompt", code="missing")
        assert_openai_error(post(json={"prompt": 5}), 400, "prompt")
        assert_openai_error(post(json={"prompt": ["ok", ""]}), 400, "prompt", "[1]")
        assert_openai_error(post(json={"prompt": "a", "max_tokenz": 4}), 400, "max_tokenz", code="unknown_parameter")
        assert_openai_error(post(json={"prompt": "a", "max_tokens": "4"}), 400, "max_tokens", "integer")
        assert_openai_error(post(json={"prompt": "a", "editing": 1}), 400, "editing", "true or false")
        assert_openai_error(post(json={"prompt": "a", "threshold": True}), 400, "threshold", "number")
        assert_openai_error(post(json={"prompt": "a", "threshold": 7.0}), 400, "threshold", "threshold")
        assert_openai_error(post(json={"prompt": "a", "preset": "turbo"}), 400, "preset", "turbo")
        assert_openai_error(post(json={"prompt": "a", "logprobs": 2}), 400, "logprobs", code="unsupported_parameter")
        assert_openai_error(post(json={"prompt": "a", "messages": []}), 400, "messages")
        assert_openai_error(post(json={"prompt": "a", "temperature": 3}), 400, "temperature")
        assert_openai_error(post(json={"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}), 400, "stop")
        assert_openai_error(post(json={"prompt": "a", "model": "gpt-4"}), 404, "model", "gpt-4", code="model_not_found")
        assert_openai_error(post(json={"prompt": "a", "max_tokens": 33}), 400, "max_tokens", "33", "32")
        assert_openai_error(post(json={"prompt": "1 2 3 4 5 6 7 8 9 " * 10, "max_tokens": 8}), 400, "prompt",
                            "20", code="context_length_exceeded")
        assert_openai_error(post(json={"prompt": "a", "n": 5}), 400, "n", "4")
        assert_openai_error(post(content=json.dumps({"prompt": "x" * 5000}).encode(),
                                 headers={"Content-Type": "application/json"}), 413, None, "4096 bytes")
        assert_openai_error(post(content=b"prompt=x", headers={"Content-Type": "text/plain"}), 415, None)
        chat = "/v1/chat/completions"
        assert_openai_error(post(chat, json={"messages": "hi"}), 400, "messages")
        assert_openai_error(post(chat, json={"messages": [{"role": "user"}]}), 400, "messages", "content")
        assert_openai_error(post(chat, json={"messages": [{"role": "robot", "content": "x"}]}), 400, "messages", "robot")
        assert_openai_error(post(chat, json={"prompt": "a", "messages": [{"role": "user", "content": "x"}]}), 400,
                            "prompt")
        assert_openai_error(client.get("/v1/nowhere"), 404, None)
    assert forwards.count == 0
    # the preset's own gen_length (256) is capped at the limit rather than refused when max_tokens is not given
    resp = client.post("/v1/completions", json={"prompt": "a", "preset": "speedy"})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] <= 32


# ---------------------------------------------------------------------------------------- streaming
def test_streamed_chunks_add_up_to_the_answer_block_by_block(model):
    client, _ = client_for(model)
    body = {"prompt": PROMPTS[0], "preset": "quality", "max_tokens": 40, "block_length": 8}
    whole = client.post("/v1/completions", json=body).json()
    with client.stream("POST", "/v1/completions", json={**body, "stream": True,
                                                         "stream_options": {"include_usage": True}}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        chunks = events(resp)
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert "".join(texts) == whole["choices"][0]["text"]
    assert len([t for t in texts if t]) >= 3, "text arrives as blocks finish, not all at the end"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert chunks[-1]["draftedit"] == whole["draftedit"]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["object"] == "text_completion"


def test_streamed_chat_names_the_role_first_and_ends_with_done(model):
    client, _ = client_for(model)
    body = {"messages": [{"role": "user", "content": "12+7="}], **FAST, "n": 2}
    whole = client.post("/v1/chat/completions", json=body).json()
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        chunks = events(resp)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == whole["choices"][i]["message"]["content"]
        assert mine[-1]["finish_reason"] == whole["choices"][i]["finish_reason"]


def test_a_deadline_mid_stream_ends_it_with_an_error_event(model, monkeypatch):
    import types

    import components.batching as batching

    client, _ = client_for(model, request_timeout_s=600)
    body = {"prompt": PROMPTS[0], "preset": "quality", "max_tokens": 64, "block_length": 8, "threshold": 1.0,
            "stream": True}
    with Forwards(model) as forwards:
        # the clock the decoding thread reads jumps past every deadline after the tenth forward
        clock = types.SimpleNamespace(monotonic=lambda: batching_time.monotonic() + (1e6 if forwards.count >= 10 else 0))
        batching_time = batching.time
        monkeypatch.setattr(batching, "time", clock)
        with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            chunks = events(resp)
    assert forwards.count == 10
    assert chunks[-1]["error"]["code"] == "timeout" and "decoding was stopped" in chunks[-1]["error"]["message"]
    assert any(c.get("choices") and c["choices"][0]["text"] for c in chunks[:-1]), "blocks finished before it"


def test_a_stream_refused_before_it_starts_is_a_plain_error(model):
    client, server = client_for(model, max_waiting=0)
    server.stopping.set()
    resp = client.post("/v1/completions", json={"prompt": "a", **FAST, "stream": True})
    assert_openai_error(resp, 503, None, "shutting down")


def test_a_client_that_leaves_mid_stream_stops_its_decoding(model):
    body = {"prompt": PROMPTS[0], "preset": "quality", "max_tokens": 200, "block_length": 4, "threshold": 1.0,
            "stream": True}
    with Forwards(model) as full:
        model.generate([model.tokenizer.encode(PROMPTS[0])],
                       model.preset_config("quality", gen_length=200, block_length=4, threshold=1.0))
    assert full.count >= 200  # threshold 1: one token per forward
    server = server_for(model)
    with live_server(server) as url, Forwards(model) as forwards:
        with httpx.Client(base_url=url, timeout=120) as http:
            with http.stream("POST", "/v1/completions", json=body) as resp:
                assert resp.status_code == 200
                first = next(line for line in resp.iter_lines() if line.startswith("data: "))
                assert json.loads(first[6:])["choices"][0]["text"] is not None
            # leaving the block closes the connection mid-stream
        assert wait_until(server.batcher.idle), "the decoding went on"
    assert forwards.count < full.count / 2, (forwards.count, full.count)


# ------------------------------------------------------------------------------------------ batching
def _hold_the_decoder(server):
    """Occupy the decoding thread with a one-row job until the returned event is set (it asks `row_done`
    before each forward), so that the requests sent meanwhile queue up and batch together."""
    release, busy = threading.Event(), threading.Event()

    def row_done(_row):
        busy.set()
        release.wait(120)
        return True

    cfg = server.model.preset_config("speedy", gen_length=8, temperature=0.5, seed=0)  # sampled: decodes alone
    job = server.batcher.submit(Job([server.model.tokenizer.encode("hold")], cfg, float("inf"), row_done=row_done))
    assert busy.wait(120)
    return release, job


def test_concurrent_requests_batch_and_each_answers_as_alone(model):
    prompts = ["12+7=", "sort 3 1 2 ->", "9+9=", "sort 5 4 ->", "1+2+3=", "7="]
    bodies = [{"prompt": p, **FAST} for p in prompts]
    bodies[1] = {"messages": [{"role": "user", "content": prompts[1]}], **FAST}
    bodies[4] = {**bodies[4], "n": 2}
    bodies[5] = {**bodies[5], "preset": "quality"}  # other settings: a batch of its own
    paths = ["/v1/chat/completions" if "messages" in b else "/v1/completions" for b in bodies]
    alone_client, _ = client_for(model)
    alone = [alone_client.post(path, json=b).json() for path, b in zip(paths, bodies)]

    client, server = client_for(model, max_batch_prompts=16, batch_wait_ms=50.0, max_waiting=16)
    release, hold = _hold_the_decoder(server)
    answers = [None] * len(bodies)

    def send(i):
        answers[i] = client.post(paths[i], json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: server.batcher.waiting == len(bodies))
    finally:
        release.set()
        for t in threads:
            t.join(timeout=300)
    server.batcher.wait(hold)
    assert all(a is not None and a.status_code == 200 for a in answers), [a and a.text for a in answers]
    together = [a.json() for a in answers]
    for mine, solo_answer in zip(together, alone):
        assert mine["choices"] == solo_answer["choices"]
        assert mine["usage"] == solo_answer["usage"] and mine["draftedit"] == solo_answer["draftedit"]
    assert sorted(server.batcher.batches[-2:]) == [1, 6], server.batcher.batches  # 5 requests, 6 rows, together
    assert wait_until(server.batcher.idle)


def test_invocations_share_the_decoding_thread_and_the_queue_limit(model):
    client, server = client_for(model, max_waiting=1, request_timeout_s=600)
    release, hold = _hold_the_decoder(server)
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(
        client.post("/invocations", json={"inputs": PROMPTS, "params": {"preset": "speedy", "gen_length": 16}})))
    waiting.start()
    try:
        assert wait_until(lambda: server.batcher.waiting == 1)
        assert_openai_error(client.post("/v1/completions", json={"prompt": "a", **FAST}), 503, None, "busy")
    finally:
        release.set()
        waiting.join(timeout=120)
    server.batcher.wait(hold)
    assert answers and answers[0].status_code == 200
    assert wait_until(server.batcher.idle)
