"""The LightningModule for CPT and SFT: the objective, its optimiser and its logging. Nothing else.

Randomness is explicit: the noise of every micro-batch comes from a generator seeded with
(seed, optimizer step, micro-batch, rank), so a run resumed from `last.ckpt` draws exactly the
noise the uninterrupted run would have drawn.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from torch.distributed.fsdp import FSDPModule, fully_shard

from .config import TrainConfig
from .moe import ExpertLoadTracker
from .objective import DraftEditObjective
from .schedule import block_length_at, effective_block_length, lr_factor

_TRAIN_SALT, _VAL_SALT = 1, 2


def step_generator(seed: int, step: int, micro: int, rank: int, salt: int, device) -> torch.Generator:
    """A generator whose state depends only on its arguments (stable across processes and resumes)."""
    g = torch.Generator(device=device)
    g.manual_seed((((seed * 1_000_003 + step) * 101 + micro) * 1009 + rank) * 7 + salt & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class DiffusionTrainingModule(L.LightningModule):
    def __init__(self, lm: torch.nn.Module, cfg: TrainConfig, *, mask_id: int, vocab_size: int, special_ids: set[int],
                 edit_ids: tuple[int, int] | None = None):
        super().__init__()
        self.lm = lm
        self.cfg = cfg
        self.objective = DraftEditObjective(cfg.objective, mask_id=mask_id, vocab_size=vocab_size,
                                            special_ids=special_ids, edit_ids=edit_ids)
        self.moe = ExpertLoadTracker(lm, rate=cfg.moe.bias_update_rate)
        self._micro = 0
        self._micro_step = -1
        self._t_last: float | None = None
        self._tokens = 0
        self.step_metrics: dict[str, float] = {}  # everything logged for the last optimizer step
        self.history: list[dict[str, float]] = []  # step_metrics of every optimizer step of this process

    def configure_model(self) -> None:
        """Under the fsdp strategy (Lightning's ModelParallelStrategy gives the device mesh): shard each
        decoder layer, then the rest of the network, with FSDP2. Frozen (LoRA base) and trainable
        parameters may share a layer. Gradient checkpointing stays the network's own switch."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or isinstance(self.lm, FSDPModule):
            return
        from model.network import DecoderLayer

        for layer in self.lm.modules():
            if isinstance(layer, DecoderLayer):
                fully_shard(layer, mesh=mesh["data_parallel"])
        fully_shard(self.lm, mesh=mesh["data_parallel"])

    # ------------------------------------------------------------------ helpers
    def block_length(self, step: int, seq_len: int) -> int:
        t = self.cfg.trainer
        return effective_block_length(block_length_at(step, t.block_length, t.block_schedule), seq_len)

    def _log_metrics(self, prefix: str, metrics: dict[str, float], batch_size: int, **kw) -> None:
        for k, v in metrics.items():
            self.log(f"{prefix}/{k}", v, batch_size=batch_size, **kw)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        if step != self._micro_step:
            self._micro_step, self._micro = step, 0
        g = step_generator(self.cfg.trainer.seed, step, self._micro, self.global_rank, _TRAIN_SALT,
                           batch["input_ids"].device)
        self._micro += 1
        bsz, seq_len = batch["input_ids"].shape
        block = self.block_length(step, seq_len)
        # a collective per micro-batch, only where some rank could draw the MTF turn
        agree = self._agree_on_mtf if self.trainer.world_size > 1 and self.cfg.objective.mtf_prob > 0 else None
        out = self.objective(self.lm, batch, block, g, step=step, agree=agree)
        self._tokens += bsz * seq_len
        metrics = dict(out.metrics)
        metrics["block_length"] = float(block)
        metrics["t2t_rate_scale"] = self.objective.t2t_rate_scale(step)
        self._log_metrics("train", metrics, bsz, on_step=True, on_epoch=False, sync_dist=False)
        self.step_metrics = {f"train/{k}": v for k, v in metrics.items()}
        return out.loss

    def _agree_on_mtf(self, drawn: bool, possible: bool) -> bool:
        """Every process runs the MTF turn or none does: a second forward on some ranks only would
        misalign the collectives of FSDP (and DDP). Rank 0's draw decides, so the MTF rate stays
        mtf_prob; it runs where every rank's batch has masked tokens to draft."""
        flags = torch.tensor([float(drawn), float(possible)], device=self.device)
        gathered = self.trainer.strategy.all_gather(flags).reshape(-1, 2)
        return bool(gathered[0, 0]) and bool(gathered[:, 1].all())

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._micro < self.cfg.trainer.accumulate_grad_batches:
            return  # not an optimizer-step boundary yet
        now = time.perf_counter()
        if self._t_last is not None:
            tokens = self._tokens * self.trainer.world_size
            self.step_metrics["train/tokens_per_s"] = tokens / max(now - self._t_last, 1e-9)
        self._t_last, self._tokens = now, 0
        self.step_metrics["train/lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        loads = self.moe.update(self.trainer.strategy.reduce if self.trainer.world_size > 1 else None)
        self.step_metrics.update({f"moe/{name}": value for name, value in loads.items()})
        for name in ("train/tokens_per_s", "train/lr", *(f"moe/{n}" for n in loads)):
            if name in self.step_metrics:
                self.log(name, self.step_metrics[name], on_step=True, on_epoch=False)
        self.history.append({"step": float(self.global_step), **self.step_metrics})

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Fixed noise per batch (same every validation) at the target block length, no MTF."""
        g = step_generator(self.cfg.trainer.seed, 0, batch_idx, self.global_rank, _VAL_SALT, batch["input_ids"].device)
        bsz, seq_len = batch["input_ids"].shape
        block = effective_block_length(self.cfg.trainer.block_length, seq_len)
        out = self.objective(self.lm, batch, block, g, step=1 << 30, mtf=False)
        keep = ("loss", "loss_m2t", "loss_t2t", "acc_masked", "acc_t2t")
        self._log_metrics("val", {k: v for k, v in out.metrics.items() if k in keep}, bsz,
                          on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        o, t = self.cfg.optim, self.cfg.trainer
        decay, no_decay = [], []
        for name, p in self.lm.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and "embeddings" not in name else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, warmup_steps=o.warmup_steps, max_steps=t.max_steps,
                                           min_lr_ratio=o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
