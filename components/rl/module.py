"""The EBPO LightningModule: rollouts, rewards, advantages, then several clipped policy steps.

Manual optimisation: one training_step is one rollout batch and `optim.inner_steps` optimizer
steps on it (θ_old fixed), so Lightning's strategies (DDP, FSDP) handle the backward and the
gradient clipping exactly as for SFT. Everything else lives in `rollouts`, `estimator`, `ebpo`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset

from components.families import Example
from components.training.schedule import cosine_factor
from model.files import atomic_write

from .config import RLConfig
from .ebpo import (
    PreparedBatch,
    all_failed_fraction,
    damp_negative,
    group_advantages,
    optimise_batch,
    permute_within_groups,
    reference_token_logp,
)
from .estimator import SequenceLayout, draw_edit_traces, draw_masks, draw_substitutes, noise_levels
from .rewards import CombinedReward
from .rollouts import decode_config, evaluate_policy, generate_rollouts, score_rollouts


class PromptBatches(Dataset):
    """Item i = the prompts of rollout step `start` + i: a seeded sample without replacement (pure in
    (seed, step)), so a resumed run starts at its step and replays nothing."""

    def __init__(self, examples: list[Example], per_step: int, steps: int, seed: int, start: int = 0):
        if not examples:
            raise ValueError("the RL prompt set is empty")
        self.examples, self.per_step, self.steps, self.seed = examples, min(per_step, len(examples)), steps, seed
        self.start = start

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __getitem__(self, i: int) -> list[Example]:
        k = self.start + i
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        idx = torch.randperm(len(self.examples), generator=g)[: self.per_step]
        return [self.examples[int(i)] for i in idx]


def as_list(item):
    """DataLoader collate for batch_size=None: the step's list of examples unchanged."""
    return item


class EBPOModule(L.LightningModule):
    def __init__(self, lm: torch.nn.Module, tokenizer, cfg: RLConfig, reward: CombinedReward,
                 eval_examples: list[Example] | None = None, ref_lm: torch.nn.Module | None = None,
                 deadline: float | None = None, progress_dir=None):
        super().__init__()
        self.automatic_optimization = False
        self.lm = lm
        self.model_config = lm.config
        self._decoder: torch.nn.Module | None = None  # FSDP only: full-weight copy for decoding
        # optim.ema_decay > 0: the Polyak average of the trainable parameters (all of them, or with LoRA
        # the adapters alone), by name; the rest of the network is shared with the online policy.
        self._average: dict[str, torch.Tensor] | None = None
        self.ref_lm = ref_lm  # the frozen initial network for the KL term (None with LoRA: adapters off)
        if ref_lm is not None:
            ref_lm.requires_grad_(False).eval()
        self.tokenizer, self.cfg, self.reward = tokenizer, cfg, reward
        self.eval_examples = eval_examples or []
        self.deadline = deadline  # time.monotonic() by which training must stop (evaluations included)
        self.progress_dir = progress_dir  # metrics.jsonl / eval_curve.json rewritten after every step
        self.history: list[dict] = []
        self.eval_curve: list[dict] = []
        self.rl_steps = 0
        self._last_eval_seconds = 0.0
        self._clock = (time.monotonic(), time.process_time())  # wall and CPU time (contention shows as a gap)
        self._pending_optimizer: dict | None = None  # a resumed run's optimizer state, loaded at train start

    def restore(self, state: dict) -> None:
        """Continue from a saved state (components.rl.state): weights, average, counters, curves, clock, RNG."""
        from .state import load_weights

        load_weights(self.lm, state["lm"])
        if state["average"] is not None:  # moved to the parameters' device at train start
            self._average = {name: state["average"][name] for name in self._trainable()}
        self.rl_steps = int(state["rl_steps"])
        self.history, self.eval_curve = list(state["history"]), list(state["eval_curve"])
        self._last_eval_seconds = float(state["last_eval_seconds"])
        self._clock = (time.monotonic() - float(state["elapsed_s"]), time.process_time())
        self._pending_optimizer = state["optimizer"]
        torch.set_rng_state(state["torch_rng"])

    def _save_state(self) -> None:
        """Write <progress_dir>/rl_state.pt every `checkpoint_every_steps` steps (rank 0; not under FSDP,
        whose sharded weights this state does not gather)."""
        every = self.cfg.checkpoint_every_steps
        if not every or self.rl_steps % every or self.progress_dir is None or self._is_fsdp():
            return
        if self.global_rank == 0:
            from .state import STATE_FILE, save_state

            save_state(self, Path(self.progress_dir) / STATE_FILE, time.monotonic() - self._clock[0])

    # ------------------------------------------------------------------ setup
    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # a list of Examples (text); rollouts build their own tensors on the model's device

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        """The parameters the optimizer moves: all of them, or with LoRA the adapters alone."""
        return {name: p for name, p in self.lm.named_parameters() if p.requires_grad}

    def configure_optimizers(self):
        o = self.cfg.optim
        return torch.optim.AdamW(list(self._trainable().values()), lr=o.lr, betas=(o.beta1, o.beta2),
                                 weight_decay=o.weight_decay)

    def _seed(self, salt: int) -> int:
        return (self.cfg.seed * 1_000_003 + self.rl_steps * 7919 + self.global_rank * 104_729 + salt) % (2 ** 62)

    # ------------------------------------------------------------------ evaluation (the improvement curve)
    def evaluate(self) -> dict | None:
        if not self.eval_examples:
            return None
        c = self.cfg
        start = time.monotonic()
        dcfg = decode_config(c.rollout, self.tokenizer, temperature=c.eval.temperature, seed=c.seed,
                             max_batch_size=c.eval.max_batch_size)
        with self.evaluated_policy() as policy:
            result = evaluate_policy(policy, self.tokenizer, self.eval_examples, dcfg, self.reward, c.prompts.template,
                                     c.eval.samples_per_prompt)
        self._last_eval_seconds = time.monotonic() - start
        point = {"step": self.rl_steps, **result, "elapsed_s": time.monotonic() - self._clock[0],
                 "cpu_s": time.process_time() - self._clock[1]}
        self.eval_curve.append(point)
        self._emit("rl_eval", result)
        self.write_progress()
        return point

    def write_progress(self) -> None:
        """Keep the curve on disk as it grows, so an interrupted run still leaves its measurements."""
        if self.progress_dir is None or self.global_rank != 0:
            return
        out = Path(self.progress_dir)
        atomic_write(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.history))
        atomic_write(out / "eval_curve.json", json.dumps(self.eval_curve, indent=2) + "\n")

    def _emit(self, prefix: str, values: dict) -> None:
        """Send metrics to the trainer's logger(s) with the rollout step as x-axis (works in any hook)."""
        metrics = {f"{prefix}/{k}": float(v) for k, v in values.items() if k != "step"}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.rl_steps)

    # ------------------------------------------------------------------ the decoding copy (FSDP)
    def _is_fsdp(self) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy

        return self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy)

    def _sync_decoder(self) -> None:
        """Under FSDP the weights are sharded and a rollout takes a data-dependent number of forwards
        (which sharded forwards, each a collective, cannot do), so each rank decodes with a plain copy
        of the full weights, refreshed here, outside any forward, like a separate rollout engine."""
        if not self._is_fsdp():
            return
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        from model import DiffusionLM

        root = self.trainer.strategy.model
        with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=False)):
            full = root.state_dict()
        weights = {k[len("lm."):]: v for k, v in full.items() if k.startswith("lm.")}
        if self._decoder is None:
            self._decoder = DiffusionLM(self.model_config).to(self.device)
        self._decoder.load_state_dict(weights)

    @property
    def rollout_policy(self) -> torch.nn.Module:
        """The online network rollouts decode with."""
        return self._decoder if self._decoder is not None else self.lm

    @contextmanager
    def evaluated_policy(self) -> Iterator[torch.nn.Module]:
        """The network evaluations decode with and `run_rl` exports: the online network, or when
        `optim.ema_decay` > 0 the same network with the averaged values swapped into its trainable
        parameters for the duration (the online values swap back after; nothing is copied)."""
        if self._average is None:
            yield self.rollout_policy
            return
        self._swap_average()
        try:
            yield self.lm
        finally:
            self._swap_average()

    @torch.no_grad()
    def _swap_average(self) -> None:
        """Exchange the storage of the trainable parameters with the average's (its own inverse)."""
        params = self._trainable()
        for name, avg in self._average.items():
            p = params[name]
            p.data, self._average[name] = avg, p.data

    @torch.no_grad()
    def _update_average(self) -> None:
        if self._average is None:
            return
        keep = self.cfg.optim.ema_decay
        params = self._trainable()
        for name, avg in self._average.items():
            avg.lerp_(params[name].detach(), 1.0 - keep)

    # ------------------------------------------------------------------ hooks (outside the training forward)
    def on_train_start(self) -> None:
        if self.cfg.optim.ema_decay > 0:
            params = self._trainable()
            if self._average is None:
                self._average = {name: p.detach().clone() for name, p in params.items()}
            else:  # restored from a state (read on the CPU)
                self._average = {name: avg.to(params[name].device) for name, avg in self._average.items()}
        if self._pending_optimizer is not None:
            optimizer = self.optimizers()
            getattr(optimizer, "optimizer", optimizer).load_state_dict(self._pending_optimizer)
            self._pending_optimizer = None
        self._sync_decoder()
        if self.rl_steps == 0:  # a resumed run has its curve up to here already
            self.evaluate()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._sync_decoder()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        every = self.cfg.eval.every_steps
        if every and self.rl_steps % every == 0 and self.eval_examples:
            self._sync_decoder()
            self.evaluate()
        self._save_state()  # after the evaluation, so the saved curve includes this step's point
        if self.deadline is not None:
            # Stop when one more step plus the final evaluation would overrun the budget (any rank decides).
            last = self.history[-1]["step_seconds"] if self.history else 0.0
            stop = self.deadline - time.monotonic() < last + self._last_eval_seconds
            if self._world_size() > 1:
                stop = self.trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                self.trainer.should_stop = True

    def on_train_end(self) -> None:
        self._sync_decoder()
        if self.eval_examples and (not self.eval_curve or self.eval_curve[-1]["step"] != self.rl_steps):
            self.evaluate()

    # ------------------------------------------------------------------ one rollout batch
    def run_progress(self) -> float:
        """How far the run is, 0..1: its step count or its wall-clock budget, whichever is further."""
        progress = self.rl_steps / self.cfg.max_steps
        if self.deadline is not None:
            start = self._clock[0]
            progress = max(progress, (time.monotonic() - start) / max(self.deadline - start, 1e-9))
        return min(1.0, progress)

    def lr_now(self) -> float:
        o = self.cfg.optim
        if o.schedule == "constant":
            return o.lr
        return o.lr * cosine_factor(self.run_progress(), o.min_lr_ratio)

    def _optimizer_step(self) -> float:
        opt = self.optimizers()
        for group in opt.param_groups:
            group["lr"] = self.lr_now()
        grads = [p.grad.detach().norm() for p in self.lm.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
        if self.cfg.optim.grad_clip > 0:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.optim.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        self._update_average()
        return norm

    def training_step(self, examples: list[Example], batch_idx: int):
        c = self.cfg
        t0 = time.monotonic()
        dcfg = decode_config(c.rollout, self.tokenizer, temperature=c.rollout.temperature, seed=self._seed(1))
        batch = score_rollouts(generate_rollouts(self.rollout_policy, self.tokenizer, examples, c.rollout.group_size,
                                                 dcfg, c.prompts.template), self.reward)
        t_rollout = time.monotonic() - t0
        adv = group_advantages(batch.rewards, c.rollout.group_size, scale=c.optim.scale_advantages)
        if c.optim.permute_advantages:
            adv = permute_within_groups(adv, c.rollout.group_size, torch.Generator().manual_seed(self._seed(3)))
        adv = damp_negative(adv, c.optim.negative_scale)
        keep = torch.arange(len(adv))
        # Under DDP every rank must run the same number of backward passes (each one all-reduces),
        # so samples are only skipped on a single process.
        if c.optim.skip_zero_advantage and c.optim.kl_coef == 0.0 and self._world_size() == 1:
            keep = (adv != 0).nonzero().flatten()
        row = {
            "reward_mean": float(batch.rewards.mean()),
            "reward_std": float(batch.rewards.std(unbiased=False)),
            "accuracy": float(batch.correct.mean()),
            "rollout_tpf": batch.tokens_per_forward,
            "rollout_length": batch.mean_length,
            "rollout_finished": batch.finished_fraction,
            "reward_errors": float(len(batch.errors)),
            "trained_fraction": len(keep) / len(adv),
            "all_failed_fraction": all_failed_fraction(batch.correct, c.rollout.group_size),
            "rollout_seconds": t_rollout,
        }
        if len(keep):
            rollouts = [batch.rollouts[int(i)] for i in keep]
            layout = SequenceLayout.from_lists([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts],
                                               dcfg.block_length, device=self.device)
            g = torch.Generator().manual_seed(self._seed(2))
            levels, weights = noise_levels(c.estimator, g)
            masks = draw_masks(layout, levels, self.tokenizer.mask_id, g)
            subs = None
            if c.estimator.edit_weight > 0:
                subs = draw_substitutes(layout, masks, c.estimator.edit_rate, self.lm.config.vocab_size,
                                        self.tokenizer.special_ids | {self.tokenizer.mask_id}, g)
            trace = None
            if c.estimator.levenshtein_rate > 0:
                mc = self.model_config
                trace = draw_edit_traces(layout, masks, subs, c.estimator.levenshtein_rate,
                                         c.estimator.levenshtein_max_ops, self.tokenizer.mask_id, mc.delete_token_id,
                                         mc.insert_token_id, self.tokenizer.special_ids | {self.tokenizer.mask_id}, g)
            prepared = PreparedBatch(layout, adv[keep].to(self.device), masks, weights, self.tokenizer.mask_id,
                                     substitutes=subs, trace=trace)
            if c.optim.kl_coef > 0 and (self.ref_lm is not None or c.lora.enabled):
                prepared.ref_token_logp = self.reference_logp(prepared)
            self.lm.train()
            row.update(optimise_batch(self.lm, prepared, c.estimator, c.optim, self.manual_backward,
                                      self._optimizer_step))
        row["lr"] = self.lr_now()
        row["step_seconds"] = time.monotonic() - t0
        row["elapsed_s"] = time.monotonic() - self._clock[0]
        self.rl_steps += 1
        row["step"] = self.rl_steps
        self.history.append(row)
        self._emit("rl", row)
        self.write_progress()
        return None

    def reference_logp(self, prepared: PreparedBatch) -> torch.Tensor:
        """Token log-probs of the KL reference (the initial network) under the batch's masks: the frozen
        copy, or with LoRA the policy itself with its adapters switched off (the base never trains)."""
        micro = self.cfg.optim.micro_batch_size
        if not self.cfg.lora.enabled:
            return reference_token_logp(self.ref_lm, prepared, micro)
        from components.training.lora import adapters_disabled

        with adapters_disabled(self.lm) as base:
            return reference_token_logp(base, prepared, micro)

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1
