"""The RL stage end to end: config, rollouts, `run_rl`, bad input, the CLI, and a toy improvement."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from components.config import ConfigError, load_config
from components.presets import DecodeChoice
from components.rl import rewards as rewards_module
from components.rl.config import RLConfig, RolloutConfig
from components.rl.module import EBPOModule
from components.rl.rewards import CombinedReward
from components.rl.rollouts import decode_config, evaluate_policy, generate_rollouts, load_prompts, score_rollouts
from components.rl.run import DEFAULT_CONFIG, RLInputError, run_rl
from components.families import get_family
from model import DiffusionLM, ModelConfig
from model.tokenizer import load_tokenizer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "rl"
# Overrides that make a run take seconds: tiny batches, short answers, one block per answer.
FAST = ["max_steps=2", "max_minutes=0", "prompts.train_size=16", "prompts.eval_size=4", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.gen_length=8", "rollout.decode.overrides.block_length=4", "eval.every_steps=1",
        "estimator.num_levels=2", "optim.inner_steps=2", "trainer.num_threads=1"]
DIGIT_REWARD = 'rewards=[{name: format, params: {pattern: ".*[0-9].*", require_eos: false}}]'


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tokenizer trained on a few synthetic prompts and a random tiny model, saved in HF layout."""
    from components.data.bpe import train_bpe_tokenizer

    path = tmp_path_factory.mktemp("rl-model")
    examples = get_family("sum").make("train", 100, 0)
    tok = train_bpe_tokenizer([e.prompt + "\n" + e.answer for e in examples], vocab_size=300, min_frequency=2)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, mask_token_id=tok.mask_id,
                           eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, max_position_embeddings=128)
    torch.manual_seed(0)
    DiffusionLM(cfg).save_pretrained(path)
    tok.save(path)
    return path


def test_every_rl_config_loads():
    files = sorted(CONF_DIR.glob("*.yaml"))
    assert DEFAULT_CONFIG in files
    for file in files:
        cfg = load_config(RLConfig, file)
        assert cfg.rollout.group_size >= 2


@pytest.mark.parametrize("override, message", [
    ("rollout.group_size=1", "rl.rollout.group_size: must be >= 2"),
    ("rewards=[{name: no_such_reward}]", "rl.rewards\\[0\\].name: unknown reward 'no_such_reward'"),
    ("rollout.temperature=0", "rl.rollout.temperature: must be > 0"),
    ("rollout.decode.preset=turbo", "rl.rollout.decode.preset: must be one of \\['quality', 'speedy'\\]"),
    ("estimator.schedule=fixed", "rl.estimator.levels: must be 1 values"),
    ("optim.negative_scale=1.5", "rl.optim.negative_scale: must be in \\[0, 1\\]"),
    ("eval.samples_per_prompt=0", "rl.eval.samples_per_prompt: must be >= 1"),
    ("eval.samples_per_prompt=4", "rl.eval.samples_per_prompt: must be 1 when eval.temperature is 0"),
    ("eval.every_steps=-1", "rl.eval.every_steps: must be >= 0"),
    ("optim.ema_decay=1.0", "rl.optim.ema_decay: must be in \\[0, 1\\)"),
    ("optim.schedule=linear", "rl.optim.schedule: must be one of"),
    ("checkpoint_every_steps=-1", "rl.checkpoint_every_steps: must be >= 0"),
    ("estimator.edit_rate=0", "rl.estimator.edit_rate: must be > 0 when rl.estimator.edit_weight > 0"),
    ("estimator.edit_rate=1.0", "rl.estimator.edit_rate: must be in \\[0, 1\\)"),
])
def test_bad_config_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(RLConfig, DEFAULT_CONFIG, [override])


def test_prompt_params_set_the_family_difficulty():
    cfg = load_config(RLConfig, DEFAULT_CONFIG, ["prompts.family=sudoku4", "prompts.params={min_clues: 9, max_clues: 10}",
                                                 "prompts.train_size=50", "prompts.eval_size=20"])
    train, held = load_prompts(cfg.prompts)
    clues = {16 - e.meta["puzzle"].count("0") for e in train + held}
    assert clues <= {9, 10} and len(clues) == 2
    assert {e.id for e in train}.isdisjoint(e.id for e in held)
    # a bad difficulty fails when the config loads, before any prompt is generated or model read
    with pytest.raises(ConfigError, match=r"rl\.prompts\.params: synthetic family 'sudoku4': unknown parameter\(s\) \['clues'\]"):
        load_config(RLConfig, DEFAULT_CONFIG, ["prompts.family=sudoku4", "prompts.params={clues: 3}"])


def test_rollouts_group_and_cut_at_block_ends(tiny_model_dir):
    lm = DiffusionLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    examples = get_family("sum").make("train", 2, 0)
    dcfg = decode_config(RolloutConfig(gen_length=8, decode=DecodeChoice("speedy", {"block_length": 4})), tok, temperature=1.0, seed=0)
    assert dcfg.threshold == 0.5 and dcfg.temperature == 1.0  # the speedy preset, sampling on
    batch = generate_rollouts(lm, tok, examples, 3, dcfg, "chat")
    assert len(batch.rollouts) == 6
    assert [r.example.id for r in batch.rollouts] == [examples[0].id] * 3 + [examples[1].id] * 3
    for r in batch.rollouts:
        assert (len(r.prompt_ids) + len(r.response_ids)) % 4 == 0  # ends on a block boundary
        assert r.response_ids[:len(r.sequence)] == r.sequence
        assert tok.mask_id not in r.response_ids
        assert r.completion.finished == (r.sequence[-1] == tok.eos_id)
    assert batch.tokens_per_forward > 0
    assert len({tuple(r.sequence) for r in batch.rollouts}) > 1  # sampling differs within the batch
    score_rollouts(batch, CombinedReward.from_specs(load_config(RLConfig, DEFAULT_CONFIG).rewards))
    assert batch.rewards.shape == (6,) and batch.correct.shape == (6,)


def test_evaluation_reports_the_edit_accounting(tiny_model_dir):
    """Every evaluation classifies the policy's edits: counts match the decoder's own."""
    lm = DiffusionLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    examples = get_family("sort").make("heldout", 4, 0)  # one valid answer: every edit is judged
    dcfg = decode_config(RolloutConfig(gen_length=8, decode=DecodeChoice("speedy", {"block_length": 4})), tok, temperature=0.0, seed=0)
    dcfg = replace(dcfg, threshold=0.0, editing_threshold=0.0, max_post_steps=2)  # a random model that edits
    reward = CombinedReward.from_specs(load_config(RLConfig, DEFAULT_CONFIG).rewards)
    out = evaluate_policy(lm, tok, examples, dcfg, reward, "chat")
    batch = generate_rollouts(lm, tok, examples, 1, replace(dcfg, record_trajectory=True), "chat")
    edits = sum(len(step.t2t) for r in batch.rollouts for step in r.trajectory.steps)
    assert edits > 0
    assert out["edits_per_sample"] == pytest.approx(edits / 4)
    assert out["edit_fixes"] + out["edit_breaks"] + out["edit_neutral"] == edits
    assert out["edit_breaks"] > 0  # a random model's edits mostly damage
    assert 0.0 <= out.get("edit_precision", 0.0) < 0.5


def test_evaluation_with_levenshtein_decoding_reports_deletions_and_insertions(tiny_model_dir):
    from model.levenshtein import add_edit_controls

    lm = DiffusionLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    delete, insert = add_edit_controls(lm)
    with torch.no_grad():  # each control wins somewhere: along one hidden direction and its opposite
        direction = torch.randn(lm.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 4
        lm.lm_head.weight[delete], lm.lm_head.weight[insert] = direction, -direction
    examples = get_family("sort").make("heldout", 4, 0)
    dcfg = decode_config(RolloutConfig(gen_length=8, decode=DecodeChoice("speedy", {"block_length": 4})), tok,
                         temperature=0.0, seed=0)
    reward = CombinedReward.from_specs(load_config(RLConfig, DEFAULT_CONFIG).rewards)
    assert "deletions_per_sample" not in evaluate_policy(lm, tok, examples, dcfg, reward, "chat")  # off: not reported
    dcfg = replace(dcfg, delete_threshold=0.2, insert_threshold=0.2)
    out = evaluate_policy(lm, tok, examples, dcfg, reward, "chat")
    batch = generate_rollouts(lm, tok, examples, 1, replace(dcfg, record_trajectory=True), "chat")
    records = [rec for r in batch.rollouts for rec in r.trajectory.structural.values()]
    deletions, insertions = sum(len(r.deleted) for r in records), sum(len(r.inserted) for r in records)
    assert deletions + insertions > 0
    assert out["deletions_per_sample"] == pytest.approx(deletions / 4)
    assert out["insertions_per_sample"] == pytest.approx(insertions / 4)
    assert sum(out[f"{k}_{v}"] for k in ("deletion", "insertion") for v in ("fixes", "breaks", "neutral")) == (
        deletions + insertions)  # sort has one valid answer: every structural edit is judged


def test_sampled_evaluation_averages_k_draws_per_prompt(tiny_model_dir):
    """eval.samples_per_prompt: k sampled responses per held-out prompt, all scored."""
    lm = DiffusionLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    examples = get_family("sum").make("heldout", 3, 0)
    dcfg = decode_config(RolloutConfig(gen_length=8, decode=DecodeChoice("speedy", {"block_length": 4})), tok, temperature=1.0, seed=0)
    calls = []

    class Digit(CombinedReward):
        def __call__(self, completion, example):
            calls.append(example.id)
            return super().__call__(completion, example)

    reward = Digit.from_specs(load_config(RLConfig, DEFAULT_CONFIG, [DIGIT_REWARD]).rewards)
    evaluate_policy(lm, tok, examples, dcfg, reward, "chat", samples_per_prompt=4)
    assert sorted(calls) == sorted([e.id for e in examples] * 4)


@pytest.mark.parametrize("estimator", [["estimator.edit_weight=0", "estimator.edit_rate=0"], []],
                         ids=["eq5", "edit_terms"])
def test_run_rl_end_to_end(tiny_model_dir, tmp_path, estimator):
    out = tmp_path / "rl"
    summary = run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + [DIGIT_REWARD, *estimator])
    ckpt = Path(summary["checkpoint_dir"])
    assert ckpt == out / "checkpoint" and (ckpt / "config.json").is_file() and (ckpt / "tokenizer.json").is_file()
    trained, initial = DiffusionLM.from_pretrained(ckpt), DiffusionLM.from_pretrained(tiny_model_dir)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), initial.state_dict().values()))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward_mean", "reward_std", "accuracy", "ratio_mean", "ratio_min", "ratio_max", "clip_fraction",
                "entropy", "rollout_tpf", "rollout_length", "grad_norm"):
        assert key in rows[-1], key
    metrics = summary["metrics"]
    for key in ("rl_eval/initial_accuracy", "rl_eval/accuracy", "rl_eval/tpf", "rl_eval/tpf_ratio", "rl/steps",
                "rl_eval/edits_per_sample", "rl_eval/edit_breaks", "rl_eval/edit_fixes"):
        assert key in metrics
    assert [p["step"] for p in summary["eval_curve"]] == [0, 1, 2]
    assert (out / "summary.json").is_file() and (out / "config.yaml").is_file()


def test_run_rl_rejects_bad_input_before_training(tiny_model_dir, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(RLInputError, match="unknown reward 'nope'"):
        run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + ["rewards=[{name: nope}]"])
    with pytest.raises(RLInputError, match="group_size: must be >= 2"):
        run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + ["rollout.group_size=1"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) for i in range(3)) + "\n")
    with pytest.raises(RLInputError, match="3 of 3 prompts have no answer the reward 'exact_match' can verify"):
        run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + [
            "prompts.source=jsonl", f"prompts.train_path={prompts}", "rewards=[{name: exact_match}]"])
    with pytest.raises(RLInputError, match="no config.json"):
        run_rl(DEFAULT_CONFIG, tmp_path / "missing", out, overrides=FAST)
    with pytest.raises(RLInputError, match="max_position_embeddings"):
        run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + ["rollout.gen_length=200"])
    with pytest.raises(RLInputError, match=r"^rl\.estimator\.levenshtein_rate=0\.5 needs a model with DELETE/INSERT rows"):
        run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + ["estimator.levenshtein_rate=0.5",
                                                                       "estimator.edit_weight=1.0"])
    assert not (out / "checkpoint").exists()


@dataclass(frozen=True)
class Flaky:
    """Raises on every other call: those samples must score as failed, the run must go on."""

    name: str = "flaky"

    def verifiable(self, example):
        return None

    def __call__(self, completion, example):
        if hash(completion.token_ids) % 2:
            raise RuntimeError("verifier crashed")
        return 1.0


def test_a_raising_reward_does_not_stop_the_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(rewards_module.REWARDS, "flaky", Flaky)
    summary = run_rl(DEFAULT_CONFIG, tiny_model_dir, tmp_path / "flaky",
                     overrides=FAST + ["max_steps=1", "prompts.eval_size=0", "rewards=[{name: flaky}]"])
    assert summary["metrics"]["rl/reward_errors"] > 0
    assert Path(summary["checkpoint_dir"], "model.safetensors").is_file()


def test_cli_reports_bad_input(tiny_model_dir, tmp_path, capsys):
    from flows.cli import main

    code = main(["rl", "--model", str(tiny_model_dir), "--out", str(tmp_path / "cli"), "rollout.group_size=1"])
    assert code == 2
    assert "rollout.group_size: must be >= 2" in capsys.readouterr().err


# ------------------------------------------------------------------ EBPO improves a policy, at toy scale


@dataclass(frozen=True)
class DigitFraction:
    """Fraction of the answer's characters that are digits: a dense reward a random model can climb."""

    name: str = "digits"

    def verifiable(self, example):
        return None

    def __call__(self, completion, example):
        text = completion.text.replace(" ", "")
        return sum(c.isdigit() for c in text) / max(1, len(text))


def test_ebpo_raises_the_reward_of_a_random_model(tiny_model_dir):
    """The whole update (rollouts -> advantages -> ELBO ratio -> clipped steps) climbs a reward."""
    torch.manual_seed(0)
    lm = DiffusionLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    cfg = load_config(RLConfig, DEFAULT_CONFIG, FAST + ["optim.lr=1e-2", "rollout.group_size=8",
                                                        "rollout.prompts_per_step=4"])
    module = EBPOModule(lm, tok, cfg, CombinedReward([(DigitFraction(), 1.0)]))
    opt = module.configure_optimizers()
    module._optimizer_step = lambda: float(_step(lm, opt))
    module.manual_backward = lambda loss: loss.backward()
    module.log = lambda *a, **k: None
    prompts = get_family("sum").make("train", 4, 0)
    for _ in range(12):
        module.training_step(prompts, 0)
    first = sum(r["reward_mean"] for r in module.history[:3]) / 3
    last = sum(r["reward_mean"] for r in module.history[-3:]) / 3
    assert last > first + 0.15, [round(r["reward_mean"], 3) for r in module.history]


def test_weight_average_is_evaluated_and_exported_while_rollouts_use_the_online_policy(tiny_model_dir):
    """optim.ema_decay d: after one optimizer step the exported policy is d θ0 + (1 − d) θ1."""
    torch.manual_seed(0)
    lm = DiffusionLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    cfg = load_config(RLConfig, DEFAULT_CONFIG, FAST + ["optim.lr=1e-2", "optim.inner_steps=1", "optim.ema_decay=0.75",
                                                        "rollout.group_size=8", "rollout.prompts_per_step=4"])
    module = EBPOModule(lm, tok, cfg, CombinedReward([(DigitFraction(), 1.0)]))
    with module.evaluated_policy() as policy:
        assert policy is lm  # no average before training starts
    module.on_train_start()
    opt = module.configure_optimizers()
    module.optimizers = lambda: opt  # the real _optimizer_step (lr schedule, clip, step, average) without a Trainer
    module.clip_gradients = lambda optimizer, gradient_clip_val, gradient_clip_algorithm: \
        torch.nn.utils.clip_grad_norm_(lm.parameters(), gradient_clip_val)
    module.manual_backward = lambda loss: loss.backward()
    before = [p.detach().clone() for p in lm.parameters()]
    module.training_step(get_family("sum").make("train", 4, 0), 0)
    assert module.history[-1]["trained_fraction"] > 0
    # the random model solves no prompt, yet trains: the signal is the format reward, not accuracy
    assert module.history[-1]["all_failed_fraction"] == 1.0
    assert module.rollout_policy is lm
    online = [p.detach().clone() for p in lm.parameters()]
    moved = False
    with module.evaluated_policy() as policy:
        for avg, old, new in zip(policy.parameters(), before, online):
            torch.testing.assert_close(avg, 0.75 * old + 0.25 * new)
            moved |= not torch.equal(old, new)
    assert moved
    for p, new in zip(lm.parameters(), online):  # the online values are back for the next rollouts
        assert torch.equal(p, new)


def test_cosine_schedule_follows_steps_or_the_clock_whichever_is_further(tiny_model_dir):
    lm = DiffusionLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    cfg = load_config(RLConfig, DEFAULT_CONFIG, FAST + ["max_steps=10", "optim.lr=1e-3", "optim.schedule=cosine",
                                                        "optim.min_lr_ratio=0.1"])
    module = EBPOModule(lm, tok, cfg, CombinedReward([(DigitFraction(), 1.0)]))
    assert module.lr_now() == pytest.approx(1e-3)
    module.rl_steps = 5
    assert module.lr_now() == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    module.rl_steps = 10
    assert module.lr_now() == pytest.approx(1e-4)
    module.rl_steps = 0
    module.deadline = module._clock[0] - 1.0  # the wall-clock budget is spent: the end of the cosine
    assert module.lr_now() == pytest.approx(1e-4)
    constant = EBPOModule(lm, tok, load_config(RLConfig, DEFAULT_CONFIG, FAST + ["optim.lr=1e-3", "optim.schedule=constant"]),
                          CombinedReward([(DigitFraction(), 1.0)]))
    constant.rl_steps = 2
    assert constant.lr_now() == 1e-3


def test_weight_average_is_refused_under_fsdp():
    with pytest.raises(ValueError, match="rl.optim.ema_decay: must be 0 under trainer.strategy 'fsdp'"):
        load_config(RLConfig, DEFAULT_CONFIG, ["optim.ema_decay=0.99", "trainer.strategy=fsdp"])


def _step(lm, opt) -> float:
    norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    return norm


def test_time_budget_stops_training_early(tiny_model_dir, tmp_path):
    """max_minutes bounds the whole stage: with a budget below one step, one step runs, not 50."""
    summary = run_rl(DEFAULT_CONFIG, tiny_model_dir, tmp_path / "budget",
                     overrides=FAST + ["max_steps=50", "max_minutes=0.001", "eval.every_steps=0", DIGIT_REWARD])
    assert summary["metrics"]["rl/steps"] == 1
    assert [p["step"] for p in summary["eval_curve"]] == [0, 1]


def test_a_crashed_run_resumes_exactly_from_its_state(tiny_model_dir, tmp_path, monkeypatch):
    """Killed after step 3 with a state saved at step 2, the rerun continues at step 2 and ends where the
    uninterrupted run ends: same weights (online, average), same per-step rewards, same held-out curve."""
    overrides = FAST + [DIGIT_REWARD, "max_steps=4", "checkpoint_every_steps=2", "optim.ema_decay=0.5",
                        "optim.schedule=cosine"]
    reference = run_rl(DEFAULT_CONFIG, tiny_model_dir, tmp_path / "reference", overrides=overrides)

    class Killed(BaseException):
        pass

    original = EBPOModule.on_train_batch_end

    def crash_after_step_3(self, *args):
        original(self, *args)
        if self.rl_steps == 3:
            raise Killed  # like a kill: nothing after this step is written

    out = tmp_path / "crashed"
    monkeypatch.setattr(EBPOModule, "on_train_batch_end", crash_after_step_3)
    with pytest.raises(Killed):
        run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=overrides)
    monkeypatch.setattr(EBPOModule, "on_train_batch_end", original)
    assert not (out / "checkpoint").exists()

    resumed = run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=overrides)
    assert resumed["metrics"]["rl/resumed_from_step"] == 2 and resumed["metrics"]["rl/steps"] == 4
    got = DiffusionLM.from_pretrained(resumed["checkpoint_dir"]).state_dict()
    want = DiffusionLM.from_pretrained(reference["checkpoint_dir"]).state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5, msg=key)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    want_rows = [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in rows] == [r["reward_mean"] for r in want_rows]
    assert [(p["step"], p["accuracy"]) for p in resumed["eval_curve"]] == \
        [(p["step"], p["accuracy"]) for p in reference["eval_curve"]]


def test_a_state_of_another_config_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "rl"
    run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + [DIGIT_REWARD, "checkpoint_every_steps=1"])
    assert (out / "rl_state.pt").is_file()
    with pytest.raises(RLInputError, match="rl_state.pt is the state of an RL run with a different config .*optim"):
        run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + [DIGIT_REWARD, "optim.lr=0.1"])
    # resume=false starts over in the same folder
    summary = run_rl(DEFAULT_CONFIG, tiny_model_dir, out, overrides=FAST + [DIGIT_REWARD, "optim.lr=0.1", "resume=false"])
    assert summary["metrics"]["rl/resumed_from_step"] == 0
