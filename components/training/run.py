"""The one training entry point: `run_training(cfg, out_dir) -> dict` for CPT and SFT.

Order of work, so that bad input stops before any training: config checks (schema) → data
(prepared or prepared now, cached) → tokenizer/model compatibility (vocabulary, special ids,
row length vs the model's position limit) → model → Lightning fit (resuming from
`<out_dir>/checkpoints/last.ckpt` when present, with `logs/run/metrics.csv` keeping its earlier rows)
→ export of the final (or top-k averaged) weights in the Hugging Face layout with the tokenizer
beside them, at `<out_dir>/model`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from components.progress import ConsoleProgress
from lightning.pytorch.plugins.io import TorchCheckpointIO

from components.config import REPO_ROOT, save_config
from model import ConfigError, DiffusionLM, ModelConfig, check_tokenizer, fill_special_ids
from model.files import atomic_dir, atomic_path, atomic_write, atomic_writer
from model.levenshtein import add_edit_controls

from .averaging import average_checkpoints, lightning_weights
from .config import TrainConfig, model_config
from .data import TrainingData, split_validation
from .lora import LoraInputError, inject_lora, merge_lora_weights
from .module import DiffusionTrainingModule

log = logging.getLogger(__name__)
# Lightning (pinned) builds torch's deprecated `LeafSpec` when it wraps the data loaders, once per fit:
# the notice is about Lightning's code and leaves the user nothing to do. Only that notice, from there.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
                        module=r"lightning\.pytorch\.utilities\._pytree")

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
EXPORT_DIR = "model"
RESULT_FILE = "result.json"


class TrainingInputError(ValueError):
    """The data, tokenizer or model cannot be trained together (raised before training starts)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename: a crash mid-write never leaves a broken last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, minus its deletion of an existing metrics.csv: rows are appended."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))

    def _check_log_dir_exists(self) -> None:
        pass


class ContinuingCSVLogger(CSVLogger):
    """`logs/run/metrics.csv` that survives a restart: a resumed run keeps the rows logged before its
    checkpoint (rows after it are replayed by the resumed run) and appends; every logged row is
    flushed at once, so a kill loses no row that the last checkpoint covers."""

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        super().__init__(out_dir, name="logs", version="run", flush_logs_every_n_steps=1)
        path = Path(self.log_dir) / _AppendingWriter.NAME_METRICS_FILE
        if resume_step is None:
            path.unlink(missing_ok=True)
        elif path.is_file():
            _keep_rows_before(path, resume_step)

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _keep_rows_before(path: Path, step: int) -> None:
    """Rewrite metrics.csv (atomically) with only its rows of steps < `step`."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r.get("step", "") != "" and int(float(r["step"])) < step]
    with atomic_writer(path) as fh:  # every DDP rank does this, with the same result; each has its own temp file
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------- inputs


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def load_training_data(cfg: TrainConfig):
    """The prepared data of the run (prepared now, or read from the cache, when not given)."""
    from components.data import load_data_config, load_prepared, prepare_data

    if cfg.data.prepared:
        prepared = load_prepared(_resolve(cfg.data.prepared))
    else:
        prepared = prepare_data(load_data_config(_resolve(cfg.data.config), cfg.data.overrides))
    dataset = prepared.cpt if cfg.stage == "cpt" else prepared.sft
    if dataset is None or len(dataset) == 0:
        raise TrainingInputError(
            f"train.stage={cfg.stage!r} but the prepared data at {prepared.root} has no {cfg.stage} rows "
            f"(enable data.{cfg.stage} in the data config, or point train.data.prepared elsewhere)")
    return prepared, dataset


def build_model(cfg: TrainConfig, tokenizer) -> DiffusionLM:
    """A checkpoint (`model.init_from`) or a preset sized to the tokenizer, with its special ids."""
    if cfg.model.init_from:
        if cfg.model.overrides:
            raise TrainingInputError("train.model.overrides cannot change a checkpoint loaded by model.init_from")
        lm = DiffusionLM.from_pretrained(_resolve(cfg.model.init_from), dtype=weights_dtype(cfg))
        fill_special_ids(lm.config, tokenizer)
        return lm
    model_cfg = model_config(cfg.model, tokenizer)
    torch.manual_seed(cfg.trainer.seed)
    return DiffusionLM(model_cfg)


def row_lengths(dataset) -> int:
    """Longest row of a CPT or SFT dataset."""
    if hasattr(dataset, "seq_len"):
        return int(dataset.seq_len)
    return int(max(dataset.lengths()))


def check_fits(model_cfg: ModelConfig, tokenizer, longest_row: int) -> None:
    """The tokenizer agrees with the model, which has a mask id to train with, and every row fits its positions."""
    try:
        check_tokenizer(model_cfg, tokenizer, need_mask_id=True)
    except ConfigError as exc:
        raise TrainingInputError(str(exc)) from exc
    if longest_row > model_cfg.max_position_embeddings:
        raise TrainingInputError(f"a training row has {longest_row} tokens, more than the model's "
                                 f"max_position_embeddings={model_cfg.max_position_embeddings} (lower "
                                 "data.max_seq_len / data.cpt.seq_len)")


def make_collate(cfg: TrainConfig, prepared):
    """The batch collator of a stage: CPT rows as they are, SFT conversations padded to whole blocks."""
    from components.data import SFTCollator, cpt_collate

    if cfg.stage == "cpt":
        return cpt_collate
    block = int(prepared.manifest.get("config", {}).get("block_length", 1))
    return SFTCollator(prepared.tokenizer.pad_id, block)


def apply_lora(lm: DiffusionLM, cfg: TrainConfig):
    """Wrap the network with peft LoRA adapters (only the adapters train)."""
    try:
        return inject_lora(lm, cfg.lora, "train.lora")
    except LoraInputError as exc:
        raise TrainingInputError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------- trainer


def precision_for(cfg: TrainConfig, on_gpu: bool) -> str:
    """The Lightning precision a run takes: the config's, or for `auto` bf16 autocast on a GPU."""
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "bf16-mixed" if on_gpu else "32-true"


def weights_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """The dtype a checkpoint's weights train in. Full fine-tuning keeps float32 master weights unless the
    precision is `*-true`: AdamW on bf16 weights loses every update below bf16's resolution (a warmup
    step of 1e-6 on a weight of 0.02), so a released bf16 checkpoint is upcast. With LoRA the base is
    frozen and stays as stored (half the memory of a 16B model); peft keeps the adapters in float32."""
    if cfg.lora.enabled or cfg.trainer.precision in ("bf16-true", "16-true"):
        return None
    return torch.float32


def gradient_checkpointing_for(cfg: TrainConfig, on_gpu: bool) -> bool:
    """Whether the network recomputes each layer in the backward pass (`auto`: on a GPU only, where
    activations, not compute, bound the batch)."""
    gc = cfg.model.gradient_checkpointing
    return gc == "on" or (gc == "auto" and on_gpu)


def _strategy(cfg: TrainConfig):
    """`fsdp` is FSDP2 (`fully_shard`, applied in DiffusionTrainingModule.configure_model) through
    Lightning's ModelParallelStrategy: pure data parallelism over every process, on CUDA and on CPU
    processes (gloo) alike, so the path a GPU run takes is the one the CPU tests run. Checkpoints
    are gathered into one full state dict (the export and exact resume read it)."""
    t = cfg.trainer
    if t.strategy != "fsdp":
        return t.strategy
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=process_count(cfg) * t.num_nodes, tensor_parallel_size=1,
                                 save_distributed_checkpoint=False)


def process_count(cfg: TrainConfig) -> int:
    """Processes on this machine: trainer.devices, with -1 = every GPU (one process on a CPU)."""
    t = cfg.trainer
    return t.devices if t.devices > 0 else (torch.cuda.device_count() if _on_gpu(cfg) else 1)


def _count_parameters(model_cfg: ModelConfig) -> int:
    with torch.device("meta"):  # shapes only: counting a 16B model allocates nothing
        return int(sum(p.numel() for p in DiffusionLM(model_cfg).parameters()))


def _on_gpu(cfg: TrainConfig) -> bool:
    if cfg.trainer.accelerator == "cpu":
        return False
    return torch.cuda.is_available()


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of the last 10% of steps; tokens/s as the median over the run."""
    if not rows:
        return {}
    tail = rows[-max(1, len(rows) // 10):]  # the last 10% of steps
    out: dict[str, float] = {}
    keys = sorted({k for r in tail for k in r if k.startswith(("train/", "moe/"))})
    for k in keys:
        vals = [r[k] for r in tail if k in r and math.isfinite(r[k])]
        if vals:
            out[k] = statistics.fmean(vals)
    tps = [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r]
    if tps:
        out["train/tokens_per_s"] = statistics.median(tps)
    return out


def export_model(weights: dict[str, torch.Tensor], model_cfg: ModelConfig, tokenizer, out_dir: Path,
                 train_cfg: TrainConfig) -> Path:
    """Write config.json + model.safetensors + tokenizer files + train_config.yaml to out_dir/model."""
    lm = DiffusionLM(model_cfg)
    lm.load_state_dict(weights)
    stored = getattr(torch, model_cfg.torch_dtype, None)  # the input checkpoint's dtype (config.json)
    if isinstance(stored, torch.dtype) and stored != lm.dtype:
        lm = lm.to(stored)  # a bf16 release trained on float32 master weights exports in bf16, as released
    final = out_dir / EXPORT_DIR
    with atomic_dir(final) as tmp:
        lm.save_pretrained(tmp)
        tokenizer.save(tmp)
        save_config(train_cfg, tmp / "train_config.yaml")
    return final


def run_training(cfg: TrainConfig, out_dir: str | os.PathLike, *, loggers: list | None = None,
                 callbacks: list | None = None) -> dict[str, Any]:
    """Train (or resume) one CPT/SFT run into `out_dir`; returns metrics and `checkpoint_dir`.

    `loggers` / `callbacks` are extra Lightning loggers (e.g. MLflow from the flows) and callbacks.
    """
    t0 = time.perf_counter()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"run_training expects a TrainConfig, got {type(cfg).__name__}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)

    prepared, dataset = load_training_data(cfg)
    tokenizer = prepared.tokenizer
    lm = build_model(cfg, tokenizer).train()  # from_pretrained returns eval mode
    check_fits(lm.config, tokenizer, row_lengths(dataset))
    if cfg.objective.levenshtein_prob > 0.0:  # the DELETE/INSERT rows its labels need (kept if already there)
        add_edit_controls(lm)
    model_cfg = lm.config
    edit_ids = None if model_cfg.delete_token_id is None else (model_cfg.delete_token_id, model_cfg.insert_token_id)
    on_gpu = _on_gpu(cfg)
    lm.gradient_checkpointing = gradient_checkpointing_for(cfg, on_gpu)
    if cfg.lora.enabled:
        lm = apply_lora(lm, cfg)
    train_set, val_set = split_validation(dataset, cfg.data.val_fraction, cfg.data.val_max_rows, cfg.trainer.seed)
    data = TrainingData(train_set, val_set, make_collate(cfg, prepared), batch_size=cfg.trainer.batch_size,
                        seed=cfg.trainer.seed, accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
                        num_workers=cfg.data.num_workers)
    special = set(tokenizer.special_ids) | {tokenizer.mask_id, tokenizer.eos_id, tokenizer.pad_id}
    module = DiffusionTrainingModule(lm, cfg, mask_id=tokenizer.mask_id, vocab_size=model_cfg.vocab_size,
                                     special_ids=special, edit_ids=edit_ids)
    save_config(cfg, out_dir / "train_config.yaml")

    t = cfg.trainer
    ckpt_dir = out_dir / CHECKPOINT_DIR
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                              every_n_train_steps=t.checkpoint_every_steps)
    cbs: list = [last_cb]
    topk_cb = None
    if cfg.averaging.top_k > 1:
        topk_cb = ModelCheckpoint(dirpath=out_dir / "topk", monitor=cfg.averaging.monitor, mode="min",
                                  save_top_k=cfg.averaging.top_k, save_weights_only=True,
                                  filename="step{step}", auto_insert_metric_name=False)
        cbs.append(topk_cb)
    cbs.append(ConsoleProgress(cfg.stage, t.max_steps, read=lambda trainer, _: {
        "loss": trainer.callback_metrics.get("train/loss", float("nan"))}))
    cbs.extend(callbacks or [])
    last = ckpt_dir / LAST
    resume = last if (t.resume and last.is_file()) else None
    resumed_from = int(torch.load(last, map_location="cpu", weights_only=False)["global_step"]) if resume else 0
    logger_list = [ContinuingCSVLogger(out_dir, resumed_from if resume else None)] + list(loggers or [])
    trainer = L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=_strategy(cfg), precision=precision_for(cfg, on_gpu),
        gradient_clip_val=cfg.optim.grad_clip or None, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_steps,
        val_check_interval=t.val_every_steps * t.accumulate_grad_batches if val_set is not None else None,
        check_val_every_n_epoch=None, limit_val_batches=1.0 if val_set is not None else 0,
        num_sanity_val_steps=0, callbacks=cbs, logger=logger_list, default_root_dir=out_dir,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
    )
    if resume:
        log.info("train: resuming from %s (step %d)", resume, resumed_from)
    trainer.fit(module, datamodule=data, ckpt_path=resume)

    # Replicas must agree after data-parallel training: compare a checksum of every rank's weights
    # (under fsdp each rank holds a shard, not a replica: nothing to compare).
    sums = None
    if cfg.trainer.strategy != "fsdp":
        checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in lm.parameters())])
        sums = trainer.strategy.all_gather(checksum.to(module.device)).flatten().cpu().tolist() \
            if trainer.world_size > 1 else checksum.tolist()
    final_ckpt = ckpt_dir / "final.ckpt"
    trainer.save_checkpoint(final_ckpt, weights_only=True)  # a full state dict, whatever the strategy
    result: dict[str, Any] = {}
    if trainer.is_global_zero:
        best = sorted(topk_cb.best_k_models) if topk_cb is not None and topk_cb.best_k_models else []
        weights = average_checkpoints(best) if len(best) > 1 else lightning_weights(final_ckpt)
        if cfg.lora.enabled:
            weights = merge_lora_weights(weights, cfg.lora.alpha, cfg.lora.r)
        checkpoint_dir = export_model(weights, model_cfg, tokenizer, out_dir, cfg)
        result = {
            **_summary(module.history),
            **{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "checkpoint_dir": str(checkpoint_dir),
            "steps": int(trainer.global_step),
            "resumed_from_step": resumed_from,
            "averaged_checkpoints": len(best) if len(best) > 1 else 0,
            "num_parameters": _count_parameters(model_cfg),
            "trainable_parameters": int(sum(p.numel() for p in lm.parameters() if p.requires_grad)),
            "world_size": trainer.world_size,
            **({} if sums is None else {"replica_checksums": sums,
                                        "replicas_in_sync": max(sums) - min(sums) <= 1e-6 * max(1.0, abs(sums[0]))}),
            "wall_seconds": time.perf_counter() - t0,
            "data_dir": str(prepared.root),
            "tokenizer_dir": str(checkpoint_dir),
        }
        atomic_write(out_dir / RESULT_FILE, json.dumps(result, indent=2, sort_keys=True))
    return result


def load_train_config(yaml_path: str | os.PathLike | None, overrides=None) -> TrainConfig:
    """TrainConfig from YAML + `key=value` overrides (unknown keys fail with their path)."""
    from components.config import load_config

    return load_config(TrainConfig, yaml_path, overrides)
