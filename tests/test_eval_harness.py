"""draftedit as an lm-evaluation-harness model, offline: local task YAMLs over tests/data/lm_eval/facts.jsonl
on a tiny model trained here for a few seconds to memorise those facts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from components import generate_cli  # noqa: E402
from components.evaluate.lm_eval_model import DraftEditLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "lm_eval"
FACTS = [json.loads(line) for line in (DATA / "facts.jsonl").read_text().splitlines()]
LINES = [f["question"] + f["answer"] for f in FACTS]
SEQ = 32  # one block of the decoding presets: training and decoding see the same attention

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-layer model trained SFT-style until it answers the facts, saved as a checkpoint folder.

    Each answer is masked at a random rate (the prompt never is) and every response token is in the
    loss, masked or visible (visible ones teach it to keep correct tokens, or T2T editing would
    replace them). Each line appears twice: padded with EOS to one decoding block (what generation
    sees) and alone (what a likelihood scores)."""
    from components.data.bpe import train_bpe_tokenizer
    from model import DiffusionLM, ModelConfig

    tok = train_bpe_tokenizer(LINES * 8, vocab_size=320, min_frequency=1)
    cfg = ModelConfig.tiny(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=128,
        mask_token_id=tok.mask_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    lm = DiffusionLM(cfg)
    lines = [tok.encode(line) for line in LINES]
    x0 = torch.tensor([ids + [tok.eos_id] * (SEQ - len(ids)) for ids in lines] * 2)  # (2N, SEQ)
    n = len(lines)
    pos = torch.arange(SEQ)[None]  # (1, SEQ)
    length = torch.tensor([len(ids) for ids in lines] + [SEQ] * n)[:, None]  # (2N, 1): alone, then padded
    prompt = torch.tensor([len(tok.encode(f["question"])) for f in FACTS] * 2)[:, None]
    visible_keys = (pos < length)[:, None, None, :].expand(-1, 1, SEQ, SEQ)  # (2N, 1, SEQ, SEQ)
    response = (pos < length) & (pos >= prompt)  # (2N, SEQ)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(480):
        t = 0.05 + 0.95 * torch.rand(x0.shape[0], 1, generator=g)  # (2N, 1)
        masked = (torch.rand(x0.shape, generator=g) < t) & response
        xt = torch.where(masked, torch.full_like(x0, tok.mask_id), x0)
        logits = lm(xt, attention_mask=visible_keys).logits  # (2N, SEQ, V)
        loss = F.cross_entropy(logits[response], x0[response])
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("facts_model")
    lm.eval().save_pretrained(folder)
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def harness(checkpoint) -> DraftEditLM:
    return DraftEditLM(pretrained=str(checkpoint), preset="quality", batch_size=4, mc_samples=8, seed=0)


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_registered_under_its_name():
    assert get_model("draftedit") is DraftEditLM


def test_trained_sequence_is_more_likely_than_its_shuffle(harness):
    g = torch.Generator().manual_seed(3)
    requests = []
    for fact in FACTS:
        context, answer = harness.tok_encode(fact["question"]), harness.tok_encode(fact["answer"])
        if len(set(answer)) < 3:
            continue
        shuffled = answer
        while shuffled == answer:
            shuffled = [answer[i] for i in torch.randperm(len(answer), generator=g).tolist()]
        requests += [(None, context, answer), (None, context, shuffled)]
    assert len(requests) >= 4
    scores = harness._loglikelihood_tokens(requests)
    for (trained, greedy), (other, other_greedy) in zip(scores[::2], scores[1::2]):
        assert trained > other + 5.0 and greedy and not other_greedy
    # the text interface: the memorised answer beats every other colour, and greedy decoding writes it
    fact = FACTS[0]
    scores = harness.loglikelihood(_requests("loglikelihood", [(fact["question"], c) for c in fact["choices"]]))
    assert max(range(4), key=lambda i: scores[i][0]) == fact["label"]
    assert [s[1] for s in scores] == [i == fact["label"] for i in range(4)]
    rolling = harness.loglikelihood_rolling(_requests("loglikelihood_rolling", [(LINES[0],), (LINES[0] * 20,)]))
    assert 0 > rolling[0] > rolling[1] > float("-inf")  # a text longer than max_length is scored in windows


def test_likelihood_is_seeded(checkpoint):
    pairs = [(f["question"], f["answer"]) for f in FACTS]
    one = DraftEditLM(pretrained=str(checkpoint), batch_size=6, mc_samples=2, seed=5, greedy_check=False)
    again = DraftEditLM(pretrained=str(checkpoint), batch_size=6, mc_samples=2, seed=5, greedy_check=False)
    other = DraftEditLM(pretrained=str(checkpoint), batch_size=6, mc_samples=2, seed=6, greedy_check=False)
    a = one.loglikelihood(_requests("loglikelihood", pairs))
    assert a == again.loglikelihood(_requests("loglikelihood", pairs))
    assert a != other.loglikelihood(_requests("loglikelihood", pairs))  # the masks are drawn, not fixed
    rebatched = DraftEditLM(pretrained=str(checkpoint), batch_size=1, mc_samples=2, seed=5, greedy_check=False)
    assert [s for s, _ in rebatched.loglikelihood(_requests("loglikelihood", pairs))] == pytest.approx(
        [s for s, _ in a], abs=1e-4)  # the noise follows each question, not the batch it lands in
    assert one.likelihood_forwards == 2 and rebatched.likelihood_forwards == 2 * len(pairs)
    assert all(score <= 0 and greedy is False for score, greedy in a)


def test_generate_until_equals_draftedit_generate(checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the CLI prints through rich: no wrapping
    prompt = FACTS[1]["question"]
    speedy = DraftEditLM(pretrained=str(checkpoint), preset="speedy", batch_size=2)
    text = speedy.generate_until(_requests("generate_until", [(prompt, {"until": [], "max_gen_toks": 20})]))[0]
    assert generate_cli.main(["--model", str(checkpoint), "--prompt", prompt, "--preset", "speedy",
                              "--gen-length", "20", "--no-live"]) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    tok = speedy.tokenizer
    assert printed == text + tok.decode([tok.eos_id]) or printed == text
    assert text.startswith(FACTS[1]["answer"])


def test_generate_until_honours_stop_strings_and_length(harness):
    prompt = FACTS[2]["question"]
    full = harness.generate_until(_requests("generate_until", [(prompt, {"until": [], "max_gen_toks": 12})]))[0]
    cut = harness.generate_until(_requests("generate_until", [(prompt, {"until": ["hi"], "max_gen_toks": 12})]))[0]
    assert full.startswith(FACTS[2]["answer"]) and cut == full.split("hi")[0] == " pure w"
    short = harness.generate_until(_requests("generate_until", [(prompt, {"until": [], "max_gen_toks": 1})]))[0]
    assert len(harness.tok_encode(short)) <= 1


def test_a_failing_request_is_recorded_and_the_others_answer(checkpoint):
    lm = DraftEditLM(pretrained=str(checkpoint), batch_size=3)
    long_prompt = "colour " * 200  # truncated from the left; 500 tokens to generate cannot fit at all
    args = [(FACTS[0]["question"], {"max_gen_toks": 8}), (long_prompt, {"max_gen_toks": 500}),
            (FACTS[3]["question"], {"max_gen_toks": 8})]
    out = lm.generate_until(_requests("generate_until", args))
    assert out[0].startswith(FACTS[0]["answer"]) and out[2].startswith(FACTS[3]["answer"])
    assert out[1] == ""
    assert len(lm.failures) == 1 and lm.failures[0]["request_type"] == "generate_until"
    assert lm.failures[0]["request"] == 1 and lm.failures[0]["context_end"].endswith("colour ")
    assert "max_position_embeddings" in lm.failures[0]["error"]


def test_bad_model_args_name_the_argument(checkpoint):
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['thresold'\]"):
        DraftEditLM(pretrained=str(checkpoint), thresold=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        DraftEditLM(pretrained=str(checkpoint), batch_size="auto")
    with pytest.raises(ValueError, match="mc_samples"):
        DraftEditLM(pretrained=str(checkpoint), mc_samples=0)


def test_local_tasks_through_simple_evaluate(checkpoint, monkeypatch):
    monkeypatch.chdir(ROOT)  # the task YAMLs name their data relative to the repository root
    manager = TaskManager(include_path=str(DATA), include_defaults=False)
    results = lm_eval.simple_evaluate(
        model="draftedit", model_args=f"pretrained={checkpoint},preset=quality,mc_samples=4",
        tasks=["draftedit_facts_gen", "draftedit_facts_mc"], task_manager=manager, batch_size=4, limit=4,
    )
    res = results["results"]
    assert res["draftedit_facts_gen"]["exact_match,none"] == 1.0
    assert res["draftedit_facts_mc"]["acc,none"] == 1.0
    assert len(results["samples"]["draftedit_facts_mc"]) == 4  # limit honoured


def test_metric_names_are_stable():
    from components.evaluate.lm_eval_model import harness_metrics

    results = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25},
               "gsm8k": {"exact_match,strict-match": 0.125, "exact_match_stderr,strict-match": "N/A"}}
    assert harness_metrics(results) == {"eval/arc_easy/acc": 0.5, "eval/arc_easy/acc_stderr": 0.1,
                                        "eval/arc_easy/acc_norm": 0.25, "eval/gsm8k/exact_match/strict-match": 0.125}


def test_evaluation_stage_runs_lm_eval_tasks_beside_its_own(checkpoint, tmp_path, monkeypatch):
    from components.evaluate.config import TaskConfigError, load_eval_config
    from flows import adapters

    monkeypatch.chdir(ROOT)
    overrides = ["tasks=[sum]", "limit=2", "presets=[]", "editing_ablation=false",
                 "task_overrides=[decode.overrides.gen_length=8]",
                 "lm_eval.tasks=[draftedit_facts_mc,draftedit_facts_gen]", f"lm_eval.include_path={DATA}",
                 "lm_eval.include_defaults=false", "lm_eval.limit=3", "lm_eval.batch_size=2",
                 "lm_eval.model_args={preset: speedy, mc_samples: 4}"]
    cfg = load_eval_config(None, overrides)
    metrics = adapters.evaluate(cfg, tmp_path, {"checkpoint": checkpoint})["metrics"]
    assert metrics["eval/draftedit_facts_mc/acc"] == 1.0 and metrics["eval/draftedit_facts_gen/exact_match"] == 1.0
    assert metrics["eval/lm_eval/failures"] == 0.0 and "eval/sum/accuracy" in metrics and "eval/score" in metrics
    saved = json.loads((tmp_path / "lm_eval" / "results.json").read_text())
    assert saved["results"]["draftedit_facts_mc"]["acc,none"] == 1.0
    assert len((tmp_path / "lm_eval" / "draftedit_facts_gen.jsonl").read_text().splitlines()) == 3
    # a misspelt task or model arg fails before anything decodes
    for bad, needle in (("lm_eval.tasks=[draftedit_facts_mcq]", "unknown lm-eval task"),
                        ("lm_eval.model_args={tresh: 0.5}", r"unknown argument\(s\) \['tresh'\]"),
                        ("lm_eval.tasks=[sum]", "collide")):
        with pytest.raises(TaskConfigError, match=needle):
            adapters.evaluate(load_eval_config(None, overrides + [bad]), tmp_path / "bad", {"checkpoint": checkpoint})
        assert not (tmp_path / "bad" / "sum").exists()



def test_checkpoint_from_a_run_or_a_registered_pyfunc_layout(checkpoint, mlflow_uri, tmp_path):
    import shutil

    import mlflow

    from components.evaluate.lm_eval_model import resolve_checkpoint
    from components.tracking.store import TrackingError

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run = client.create_run(client.create_experiment("harness"))
    client.log_artifacts(run.info.run_id, str(checkpoint), "checkpoint")
    client.set_terminated(run.info.run_id)
    model = DraftEditLM(pretrained=f"runs:/{run.info.run_id}/checkpoint", tracking_uri=mlflow_uri, batch_size=1)
    assert model.lm.config.vocab_size == model.tokenizer.vocab_size
    pyfunc = tmp_path / "model"  # what models:/<name>/<version> downloads: the pyfunc with the checkpoint inside
    shutil.copytree(checkpoint, pyfunc / "artifacts" / "checkpoint")
    assert resolve_checkpoint(str(pyfunc)) == pyfunc / "artifacts" / "checkpoint"
    with pytest.raises(TrackingError, match="not a checkpoint folder"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(TrackingError, match="pretrained"):
        resolve_checkpoint(f"runs:/{run.info.run_id}/nothing_here", mlflow_uri)


def test_generation_kwargs_map_onto_the_decoder(harness, caplog):
    cfg, until = harness._generation_config({"until": "\n\n", "max_gen_toks": 5, "do_sample": True,
                                             "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1})
    assert (cfg.gen_length, cfg.temperature, cfg.top_p, until) == (5, 0.7, 0.9, ["\n\n"])
    assert "repetition_penalty" in caplog.text
    greedy, _ = harness._generation_config({"do_sample": False, "temperature": 0.7, "threshold": 0.6})
    assert greedy.temperature == 0.0 and greedy.threshold == 0.6 and greedy.gen_length == harness.decode.gen_length
    sampled = {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 1.5}
    args = [(FACTS[4]["question"], sampled)] * 3
    first = harness.generate_until(_requests("generate_until", args))
    assert first == harness.generate_until(_requests("generate_until", args))  # the seed fixes the draws


def test_command_reports_a_bad_model_arg_in_one_line(checkpoint, capsys, monkeypatch):
    """The command hands its arguments to lm-eval; lm-eval's own start (indexing ~15k built-in tasks,
    10-20 s) is replaced here by what it does with --model/--model_args: registry lookup, arg string."""
    import lm_eval.__main__

    from components.evaluate import lm_eval_cli

    def lm_eval_main():
        argv = sys.argv[1:]
        model = get_model(argv[argv.index("--model") + 1])
        model.create_from_arg_string(argv[argv.index("--model_args") + 1], {"batch_size": 2, "device": "cuda"})

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lm_eval_main)
    ok = ["--model", "draftedit", "--model_args", f"pretrained={checkpoint},preset=speedy,mc_samples=2"]
    assert lm_eval_cli.main(ok) == 0  # a CUDA-less machine falls back to the CPU, as lm-eval's hf model does
    bad = ["--model", "draftedit", "--model_args", f"pretrained={checkpoint},thresold=0.5"]
    assert lm_eval_cli.main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("draftedit-lm-eval: error: draftedit model_args: unknown argument(s) ['thresold']")
    assert "Traceback" not in "\n".join(err)


def test_the_target_delimiter_is_dropped_after_the_reply_marker(checkpoint, harness):
    """After the chat template's reply marker the model writes its answer at once: lm-eval's ' ' is
    not scored there; anywhere else lm-eval's own split stands."""
    chat = harness.apply_chat_template([{"role": "user", "content": FACTS[0]["question"]}])
    assert harness.reply_marker and chat.endswith(harness.reply_marker)
    context, continuation = harness._encode_pair(chat, " light blue")
    assert (context, continuation) == (harness.tok_encode(chat), harness.tok_encode("light blue"))
    plain = harness._encode_pair(FACTS[0]["question"], " light blue")
    kept = DraftEditLM(pretrained=str(checkpoint), reply_lstrip="false", greedy_check="false")
    assert kept.reply_marker is None and kept.greedy_check is False
    assert kept._encode_pair(chat, " light blue")[1] != continuation
    assert plain == kept._encode_pair(FACTS[0]["question"], " light blue")
    with pytest.raises(ValueError, match="reply_lstrip must be true or false"):
        DraftEditLM(pretrained=str(checkpoint), reply_lstrip="maybe")
