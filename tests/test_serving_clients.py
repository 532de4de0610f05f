"""The model server driven by clients written elsewhere, over real HTTP (uvicorn in a thread): the `openai`
package (completions, chat, streamed chunks, errors) and lm-eval's `local-completions` model on a local
generation task. Each answer is checked against the decoder's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving_support import MODEL_NAME, live_server, load_model, server_for

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "lm_eval"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def url(model):
    with live_server(server_for(model, max_gen_length=64)) as base:
        yield base


@pytest.fixture
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def alone(model, ids, preset="quality", stop=(), **fields) -> str:
    """The text of one prompt decoded alone, cut before the first stop string."""
    res = model.generate([ids], model.preset_config(preset, **fields))
    text = model.tokenizer.decode(res.sequences[0], skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text


def test_openai_completions_and_chat(client, model):
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    resp = client.completions.create(model=MODEL_NAME, prompt=["12+7=", "9+9="], max_tokens=16,
                                     extra_body={"preset": "speedy", "block_length": 8})
    assert [c.text for c in resp.choices] == [
        alone(model, model.tokenizer.encode(p), "speedy", gen_length=16, block_length=8) for p in ("12+7=", "9+9=")]
    assert resp.usage.completion_tokens > 0 and resp.model == MODEL_NAME
    assert resp.model_extra["draftedit"]["forwards"] > 0

    messages = [{"role": "user", "content": "sort 3 1 2 ->"}]
    chat = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=16, temperature=0)
    ids = model.tokenizer.encode(model.tokenizer.apply_chat_template(messages))
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == alone(model, ids, gen_length=16)
    assert chat.usage.prompt_tokens == len(ids)


def test_openai_streams_read_by_the_same_client(client, model):
    body = dict(model=MODEL_NAME, prompt="12+7=", max_tokens=40, extra_body={"block_length": 8})
    whole = client.completions.create(**body).choices[0].text
    pieces = [chunk.choices[0].text for chunk in client.completions.create(**body, stream=True) if chunk.choices]
    assert "".join(pieces) == whole and len([p for p in pieces if p]) >= 2

    messages = [{"role": "user", "content": "12+7="}]
    chat = dict(model=MODEL_NAME, messages=messages, max_tokens=40, extra_body={"block_length": 8})
    whole = client.chat.completions.create(**chat).choices[0].message.content
    stream = client.chat.completions.create(**chat, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_errors_raise_the_clients_own_exceptions(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=4)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=65)
    assert too_long.value.param == "max_tokens" and "64" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=4, extra_body={"treshold": 0.5})
    assert unknown.value.param == "treshold"


def test_lm_eval_local_completions_on_a_local_task(url, model, monkeypatch):
    """lm-eval's OpenAI-compatible client, several requests in flight at once, on a generation task; its
    recorded answers are the decoder's (with the task's stop string and length)."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(ROOT)  # the task YAMLs name their data relative to the repository root
    manager = TaskManager(include_path=str(DATA), include_defaults=False)
    args = (f"model={MODEL_NAME},base_url={url}/v1/completions,tokenizer_backend=None,tokenized_requests=False,"
            "num_concurrent=4,max_retries=1")
    results = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=["draftedit_facts_gen"],
                                      task_manager=manager, limit=6)
    samples = results["samples"]["draftedit_facts_gen"]
    assert len(samples) == 6
    for sample in samples:
        question = sample["doc"]["question"]
        expected = alone(model, model.tokenizer.encode(question), stop=["\n"], gen_length=8)
        assert sample["resps"][0][0] == expected, question
    assert "exact_match,none" in results["results"]["draftedit_facts_gen"]
