"""EBPO with LoRA adapters on the scaled LLaDA2 MoE stand-in.

The KL reference is the policy with its adapters switched off, not a copy: these tests check that
switching off gives back the base model exactly (also after the adapters have moved), that the RL
stage then holds one copy of the weights, and that the real entry trains the stand-in and exports a
merged checkpoint under the released key names.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from components.config import load_config
from components.families import SYNTHETIC_FAMILIES, get_family
from components.rl import rewards as rewards_module
from components.rl.config import RLConfig
from components.rl.ebpo import PreparedBatch, reference_token_logp
from components.rl.estimator import SequenceLayout, draw_masks, noise_levels
from components.rl.module import EBPOModule
from components.rl.rewards import CombinedReward
from components.rl.rollouts import encode_prompt
from components.rl.run import DEFAULT_CONFIG, RLInputError, run_rl
from components.training.config import LoraSection
from components.training.lora import adapters_disabled, inject_lora
from flows.cli import main
from model import DiffusionLM, check_tokenizer
from model.tokenizer import load_tokenizer

pytest.importorskip("peft")

SHAPE = ["--shape", "cpu", "--layers", "3", "--dense-layers", "1", "--experts", "4", "--groups", "2",
         "--topk-groups", "1", "--experts-per-token", "2", "--shared-experts", "1"]
TARGETS = ["query_key_value", "dense", "gate_proj", "up_proj", "down_proj"]  # attention and every MLP/expert
# Seconds-long runs: the sum family, tiny batches, one block per answer, LoRA on and a KL term.
FAST = ["max_steps=2", "max_minutes=0", "prompts.family=sum", "prompts.params={}", "prompts.train_size=8",
        "prompts.eval_size=2", "rollout.prompts_per_step=2", "rollout.group_size=3", "rollout.gen_length=4",
        "rollout.decode.overrides.block_length=4", "eval.every_steps=0", "estimator.num_levels=1",
        "optim.inner_steps=2", "optim.lr=0.02", "optim.kl_coef=0.1", "checkpoint_every_steps=0",
        "trainer.num_threads=1", "rewards=[{name: spread}]", "lora.enabled=true", "lora.r=4", "lora.alpha=8",
        f"lora.target_modules=[{','.join(TARGETS)}]"]


@dataclass(frozen=True)
class Spread:
    """A reward almost any two responses differ in, so every group has advantages and the adapters move."""

    name: str = "spread"

    def verifiable(self, example):
        return None

    def __call__(self, completion, example):
        return (sum(completion.token_ids) % 11) / 10


@pytest.fixture(autouse=True)
def spread_reward(monkeypatch):
    monkeypatch.setitem(rewards_module.REWARDS, "spread", Spread)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standin") / "cpu"
    assert main(["checkpoint", "init", "--like", "llada2.1-mini", *SHAPE, "--out", str(folder)]) == 0
    return folder


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _held_bytes(module: EBPOModule) -> int:
    """Bytes of the distinct tensor storages the RL module holds: everything reachable from its
    attributes (networks, copies, averages, in modules, dicts or lists) plus the optimizer state."""
    storages: dict[int, int] = {}
    seen: set[int] = set()
    todo: list = [v for k, v in vars(module).items() if k != "_trainer"]
    optimizer = module.optimizers()
    todo.append(getattr(optimizer, "optimizer", optimizer).state)
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            todo.extend(obj)
        elif isinstance(obj, torch.nn.Module):
            todo.extend(vars(obj).values())
    return sum(storages.values())


# ------------------------------------------------------------------ config


def test_rl_lora_is_train_lora_schema_off_by_default():
    cfg = load_config(RLConfig, DEFAULT_CONFIG)
    assert isinstance(cfg.lora, LoraSection) and not cfg.lora.enabled


@pytest.mark.parametrize("override, message", [
    ("lora.r=0", r"rl\.lora\.r: must be >= 1"),
    ("lora.dropout=1.5", r"rl\.lora\.dropout: must be in \[0, 1\]"),
    ("lora.target_modules=[]", r"rl\.lora\.target_modules: is empty"),
    ("trainer.strategy=fsdp", r"rl\.lora\.enabled: must be false under trainer.strategy 'fsdp'"),
])
def test_bad_rl_lora_values_name_the_key(override, message):
    overrides = ["lora.enabled=true", "optim.ema_decay=0", override]
    with pytest.raises(ValueError, match=message):
        load_config(RLConfig, DEFAULT_CONFIG, overrides)


def test_a_target_the_moe_lacks_stops_before_any_rollout(standin, tmp_path):
    with pytest.raises(RLInputError, match=r"^rl\.lora\.target_modules: no module named \['q_proj'\]"):
        run_rl(DEFAULT_CONFIG, standin, tmp_path, overrides=FAST + ["lora.target_modules=[q_proj]"])
    assert not (tmp_path / "checkpoint").exists()


# ------------------------------------------------------------------ the reference is the base, exactly


def _batch(tok, lm, n: int = 4, seed: int = 0) -> PreparedBatch:
    """Prompts of the sum family with random responses, masked at one noise level."""
    g = torch.Generator().manual_seed(seed)
    prompts = [encode_prompt(tok, e.prompt, "chat") for e in get_family("sum").make("train", n, seed)]
    responses = [torch.randint(10, lm.config.vocab_size, (6,), generator=g).tolist() for _ in prompts]
    layout = SequenceLayout.from_lists(prompts, responses, 4)
    cfg = load_config(RLConfig, DEFAULT_CONFIG, ["estimator.num_levels=1"])
    levels, weights = noise_levels(cfg.estimator, g)
    return PreparedBatch(layout, torch.zeros(n), draw_masks(layout, levels, tok.mask_id, g), weights, tok.mask_id)


def test_reference_is_the_untouched_base_after_the_adapters_moved(standin):
    torch.manual_seed(0)
    tok = load_tokenizer(standin)
    base = DiffusionLM.from_pretrained(standin, dtype=torch.float32)
    cfg = load_config(RLConfig, DEFAULT_CONFIG, FAST + ["optim.ema_decay=0"])
    lm = inject_lora(DiffusionLM.from_pretrained(standin, dtype=torch.float32), cfg.lora, "rl.lora").train()
    module = EBPOModule(lm, tok, cfg, CombinedReward([(Spread(), 1.0)]))
    opt = module.configure_optimizers()
    trainable = [p for p in lm.parameters() if p.requires_grad]
    assert {id(p) for group in opt.param_groups for p in group["params"]} == {id(p) for p in trainable}
    module.optimizers = lambda: opt  # the real _optimizer_step without a Trainer
    module.clip_gradients = lambda optimizer, gradient_clip_val, gradient_clip_algorithm: \
        torch.nn.utils.clip_grad_norm_(trainable, gradient_clip_val)
    module.manual_backward = lambda loss: loss.backward()
    adapters = [p.detach().clone() for p in trainable]
    for _ in range(2):
        module.training_step(get_family("sum").make("train", 2, 0), 0)
    assert "kl" in module.history[-1]  # the KL term was computed, against the adapters-off network
    assert any(not torch.equal(a, p) for a, p in zip(adapters, trainable))  # the adapters moved

    batch = _batch(tok, base)
    want = reference_token_logp(base.eval(), batch, 2)
    got = module.reference_logp(batch)
    scored = batch.masks[0]  # the positions the reference is read at
    torch.testing.assert_close(got[0][scored], want[0][scored], atol=1e-5, rtol=1e-5)
    policy = reference_token_logp(lm, batch, 2)
    assert (policy[0][scored] - want[0][scored]).abs().max() > 1e-3  # while the policy has moved away
    assert all(p.requires_grad for p in trainable)  # the adapters are on and trainable again


def test_adapters_disabled_restores_the_adapters_when_the_body_raises(standin):
    lora = LoraSection(enabled=True, r=2, alpha=4, dropout=0.0, target_modules=["dense"])
    lm = inject_lora(DiffusionLM.from_pretrained(standin, dtype=torch.float32), lora, "rl.lora")
    with pytest.raises(RuntimeError), adapters_disabled(lm):
        raise RuntimeError("inside")
    assert all(not layer.disable_adapters for layer in lm.modules() if hasattr(layer, "lora_A"))


# ------------------------------------------------------------------ the real entry on the MoE


def test_the_families_tokenize_with_the_standin_tokenizer(standin):
    tok = load_tokenizer(standin)
    check_tokenizer(DiffusionLM.from_pretrained(standin).config, tok)
    for name in sorted(SYNTHETIC_FAMILIES):
        for example in get_family(name).make("train", 5, 0):
            for text in (example.prompt, example.answer):
                assert tok.decode(tok.encode(text)) == text, (name, text)


def test_ebpo_with_lora_and_kl_on_the_moe_exports_merged_adapters(standin, tmp_path, monkeypatch):
    """2 steps with a KL term and a weight average: no network is ever copied, the module holds one
    copy of the weights, and the export is the base plus merged adapters under the released names."""
    def refuse(self, memo):
        raise AssertionError("the network was deep-copied")

    monkeypatch.setattr(DiffusionLM, "__deepcopy__", refuse, raising=False)
    held = {}
    original = EBPOModule.on_train_end

    def measure(self):
        held["bytes"], held["average"] = _held_bytes(self), dict(self._average)
        original(self)

    monkeypatch.setattr(EBPOModule, "on_train_end", measure)
    summary = run_rl(DEFAULT_CONFIG, standin, tmp_path / "rl", overrides=FAST + ["optim.ema_decay=0.5"])
    assert summary["metrics"]["rl/steps"] == 2 and "rl/kl" in summary["metrics"]

    base, merged = _weights(standin), _weights(tmp_path / "rl" / "checkpoint")
    assert merged.keys() == base.keys()  # the released key names, no adapter tensors
    one_copy = sum(t.numel() * t.element_size() for t in base.values())
    assert held["bytes"] < 1.5 * one_copy, (held["bytes"], one_copy)
    assert held["average"] and all("lora_" in name for name in held["average"])  # the adapters' average only
    changed = {k for k in base if not torch.equal(base[k].float(), merged[k].float())}
    adapted = {k for k in base if k.endswith(tuple(f".{t}.weight" for t in TARGETS))}
    assert changed and changed <= adapted  # the merged adapters and nothing else
    assert any(".experts." in k for k in changed)  # routed experts are adapted too
    biases = [k for k in base if k.endswith("expert_bias")]
    assert biases and all(torch.equal(base[k], merged[k]) for k in biases)  # no balancing update in RL
    lm = DiffusionLM.from_pretrained(tmp_path / "rl" / "checkpoint")
    assert lm.config.num_experts == 4 and lm.config.first_k_dense_replace == 1


def test_full_weight_rl_with_kl_holds_more_than_one_copy(standin, tmp_path, monkeypatch):
    """The control of the measurement above: without LoRA the KL reference is a copy, and it shows."""
    held = {}
    original = EBPOModule.on_train_end

    def measure(self):
        held["bytes"] = _held_bytes(self)
        original(self)

    monkeypatch.setattr(EBPOModule, "on_train_end", measure)
    run_rl(DEFAULT_CONFIG, standin, tmp_path / "rl", overrides=FAST + ["max_steps=1", "lora.enabled=false",
                                                                    "optim.ema_decay=0", "prompts.eval_size=0"])
    one_copy = sum(t.numel() * t.element_size() for t in _weights(standin).values())
    assert held["bytes"] >= 2 * one_copy, (held["bytes"], one_copy)


def test_a_lora_run_resumes_from_a_state_without_the_base_weights(standin, tmp_path):
    """The state holds the adapters (and buffers), not the frozen base: a run stopped after step 1 and
    continued to step 2 exports what the uninterrupted 2-step run exports."""
    overrides = FAST + ["optim.ema_decay=0.5", "checkpoint_every_steps=1"]
    whole = run_rl(DEFAULT_CONFIG, standin, tmp_path / "whole", overrides=overrides)
    out = tmp_path / "stopped"
    run_rl(DEFAULT_CONFIG, standin, out, overrides=overrides + ["max_steps=1"])
    state = torch.load(out / "rl_state.pt", map_location="cpu", weights_only=False)
    assert any("lora_" in k for k in state["lm"]) and not any(".base_layer." in k for k in state["lm"])
    resumed = run_rl(DEFAULT_CONFIG, standin, out, overrides=overrides)
    assert resumed["metrics"]["rl/resumed_from_step"] == 1 and resumed["metrics"]["rl/steps"] == 2
    got, want = _weights(out / "checkpoint"), _weights(tmp_path / "whole" / "checkpoint")
    assert got.keys() == want.keys() and whole["metrics"]["rl/steps"] == 2
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)

def test_the_16b_preset_runs_rl_with_the_sft_adapters(tmp_path):
    from flows.config import load_pipeline_config, stage_config_path, stage_overrides
    from flows.stages import load_stage_config

    cfg = load_pipeline_config("llada2.1-mini", [f"init_checkpoint={tmp_path}"])
    sft, rl = (load_stage_config(s, stage_config_path(cfg.stage(s)), stage_overrides(cfg, s)) for s in ("sft", "rl"))
    assert sft.lora.enabled and rl.lora.enabled
    assert rl.lora.target_modules == sft.lora.target_modules
    assert (rl.lora.r, rl.lora.alpha) == (sft.lora.r, sft.lora.alpha)
