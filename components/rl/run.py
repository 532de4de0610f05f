"""The RL stage's one entry point: `run_rl(cfg, model_dir, out_dir) -> dict`.

Everything that can be wrong with the inputs (config, reward names, unverifiable prompts, prompts too
long for the model, tokenizer/model mismatch) is checked before the first rollout. Outputs:

  out_dir/checkpoint/       the trained policy, HF layout (config.json, model.safetensors, tokenizer); with
                            `lora.enabled` the adapters merged, under the input's key names
  out_dir/metrics.jsonl     one line per rollout step (the logged statistics)
  out_dir/eval_curve.json   held-out accuracy / TPF before, during and after training
  out_dir/summary.json      the returned metrics
  out_dir/config.yaml       the resolved config
  out_dir/rl_state.pt       the exact-resume state (every `checkpoint_every_steps`; see `state`): a
                            rerun into the same out_dir continues from it
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from components.config import load_config, save_config
from components.progress import ConsoleProgress
from model.files import atomic_dir, atomic_write

from .config import RLConfig
from .state import STATE_FILE, StateMismatchError, load_state

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "rl" / "default.yaml"


class RLInputError(ValueError):
    """The config, checkpoint or prompt set cannot be trained on (raised before any rollout)."""


def resolve_config(cfg: RLConfig | str | os.PathLike | None, overrides: list[str] | None = None) -> RLConfig:
    if isinstance(cfg, RLConfig):
        if overrides:
            raise ValueError("overrides apply to a config file; pass an RLConfig without overrides")
        return cfg
    return load_config(RLConfig, cfg if cfg is not None else DEFAULT_CONFIG, overrides)


def _progress_figures(trainer, module) -> dict[str, float]:
    """Latest rollout reward and held-out accuracy, for the live progress line."""
    out = {}
    if module.history:
        out["reward"] = module.history[-1]["reward_mean"]
    if module.eval_curve:
        out["heldout_acc"] = module.eval_curve[-1]["accuracy"]
    return out


def run_rl(cfg: RLConfig | str | os.PathLike, model_dir: str | os.PathLike, out_dir: str | os.PathLike,
           *, overrides: list[str] | None = None, logger=None) -> dict[str, Any]:
    """Train `model_dir` with EBPO under `cfg`; return metrics and the exported `checkpoint_dir`."""
    import lightning as L
    from torch.utils.data import DataLoader

    from components.training.lora import inject_lora, released_network
    from model import DiffusionLM, check_tokenizer
    from model.decoding import validate as validate_decode
    from model.tokenizer import load_tokenizer

    from .module import EBPOModule, PromptBatches, as_list
    from .rewards import CombinedReward
    from .rollouts import decode_config, encode_prompt, load_prompts

    start = time.monotonic()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    # ---- everything checkable, checked before any rollout
    try:
        cfg = resolve_config(cfg, overrides)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model_dir {model_dir} has no config.json (expected an HF-layout checkpoint)")
        reward = CombinedReward.from_specs(cfg.rewards, cfg.accuracy_reward)
        train, held = load_prompts(cfg.prompts)
        reward.check_verifiable(train)
        if held:
            reward.check_verifiable(held)
        tokenizer = load_tokenizer(cfg.tokenizer_path or model_dir)
        lm = DiffusionLM.from_pretrained(model_dir)
        check_tokenizer(lm.config, tokenizer)
        if cfg.estimator.levenshtein_rate > 0 and lm.config.delete_token_id is None:
            raise ValueError(f"rl.estimator.levenshtein_rate={cfg.estimator.levenshtein_rate} needs a model with "
                             f"DELETE/INSERT rows, but {model_dir}/config.json has no delete_token_id (train SFT "
                             "with objective.levenshtein_prob > 0)")
        dcfg = decode_config(cfg.rollout, tokenizer, temperature=cfg.rollout.temperature, seed=cfg.seed)
        validate_decode(lm, [encode_prompt(tokenizer, e.prompt, cfg.prompts.template) for e in train + held], dcfg)
        if cfg.lora.enabled:
            torch.manual_seed(cfg.seed)  # the adapters' initial values: the same for every run of this config
            lm = inject_lora(lm, cfg.lora, "rl.lora")
    except (ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise RLInputError(message) from exc
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    lm.train()

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        state = load_state(out_dir / STATE_FILE, cfg) if cfg.resume else None
    except StateMismatchError as exc:
        raise RLInputError(str(exc)) from exc
    save_config(cfg, out_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    # The KL reference: the initial weights, also when resuming. With LoRA the policy's base is exactly
    # that (adapters off), so no copy is made.
    ref_lm = copy.deepcopy(lm) if cfg.optim.kl_coef > 0 and not cfg.lora.enabled else None
    if state is not None:
        start -= float(state["elapsed_s"])  # the budget continues; it does not restart
    deadline = start + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else None
    module = EBPOModule(lm, tokenizer, cfg, reward, held, ref_lm=ref_lm, deadline=deadline, progress_dir=out_dir)
    if state is not None:
        module.restore(state)
        log.info("rl: resuming from %s (step %d)", out_dir / STATE_FILE, module.rl_steps)
    loader = DataLoader(PromptBatches(train, cfg.rollout.prompts_per_step, cfg.max_steps, cfg.seed,
                                      start=module.rl_steps),
                        batch_size=None, collate_fn=as_list, shuffle=False)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision, max_epochs=1, logger=logger if logger is not None else False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, default_root_dir=str(out_dir), num_sanity_val_steps=0,
        callbacks=[ConsoleProgress("rl", cfg.max_steps, read=_progress_figures, step=lambda _, m: m.rl_steps,
                                   deadline=deadline)])
    resumed_from = module.rl_steps
    trainer.fit(module, train_dataloaders=loader)

    checkpoint = out_dir / "checkpoint"
    if trainer.is_global_zero:
        with atomic_dir(checkpoint) as tmp:  # a reader never sees half a checkpoint
            with module.evaluated_policy() as policy, released_network(policy) as network:
                network.save_pretrained(tmp)
            tokenizer.save(tmp)
        module.write_progress()  # metrics.jsonl, eval_curve.json
    metrics: dict[str, float] = {"rl/steps": float(module.rl_steps), "rl/wall_seconds": time.monotonic() - start,
                                 "rl/resumed_from_step": float(resumed_from)}
    if module.history:
        last = module.history[-1]
        metrics.update({f"rl/{k}": float(v) for k, v in last.items() if k != "step"})
    if module.eval_curve:
        first, final = module.eval_curve[0], module.eval_curve[-1]
        for key in ("accuracy", "tpf", "length", "edits_per_sample", "edit_fixes", "edit_breaks", "edit_precision"):
            if key in first:
                metrics[f"rl_eval/initial_{key}"] = float(first[key])
            if key in final:  # edit_precision only where some edit was decisive
                metrics[f"rl_eval/{key}"] = float(final[key])
        metrics["rl_eval/accuracy_gain"] = float(final["accuracy"] - first["accuracy"])
        metrics["rl_eval/tpf_ratio"] = float(final["tpf"] / first["tpf"]) if first["tpf"] else float("nan")
    summary = {"checkpoint_dir": str(checkpoint), "metrics": metrics, "eval_curve": module.eval_curve,
               "history_path": str(out_dir / "metrics.jsonl")}
    if trainer.is_global_zero:
        atomic_write(out_dir / "summary.json",
                     json.dumps({"checkpoint_dir": str(checkpoint), "metrics": metrics}, indent=2) + "\n")
    return summary
