"""Schema of the CPT / SFT training stage (defaults live in `conf/train/*.yaml`).

Loaded with `components.config.load_config(TrainConfig, yaml, overrides)`: unknown keys and wrong
types fail with their key path; `__post_init__` checks values and names the field (`train.objective.t_min`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STAGES = ("cpt", "sft")
PRESETS = ("tiny", "tiny_moe")
WEIGHTINGS = ("none", "inv_t")
NOISE_PER = ("sequence", "block")
T2T_SOURCES = ("uniform", "batch")
VISIBLE_NORMALIZERS = ("pooled", "per_stream")
MTF_SELECT = ("confidence", "random")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")


@dataclass
class ModelSection:
    init_from: str | None = None  # a checkpoint folder (HF layout) to start from; None = random init
    preset: str = "tiny"  # ModelConfig preset used when init_from is None
    # ModelConfig fields over the preset (e.g. hidden_size: 64). Special ids and the vocabulary size
    # come from the tokenizer unless set here.
    overrides: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: str = "auto"  # auto (on GPU only) | on | off


@dataclass
class DataSection:
    config: str = "conf/data/default.yaml"  # the data-stage config (relative to the repo root or absolute)
    overrides: list[str] = field(default_factory=list)
    prepared: str | None = None  # an already prepared data directory (from the data stage); wins over config
    val_fraction: float = 0.02  # rows held out of the training data for validation (0 = no validation)
    val_max_rows: int = 64
    num_workers: int = 0


@dataclass
class ObjectiveConfig:
    # M2T stream: the "mask ratio bandwidth" and the loss weighting.
    t_min: float = 0.2
    t_max: float = 1.0
    noise_per: str = "sequence"  # sequence | block
    weighting: str = "none"  # none (mean over masked tokens) | inv_t (ELBO 1/t weight)
    # T2T stream: per sequence, each visible noisable token is replaced with prob r ~ U[rate_min, rate_max].
    t2t_rate_min: float = 0.0
    t2t_rate_max: float = 0.2
    t2t_source: str = "batch"  # batch (tokens of the batch) | uniform (whole vocabulary minus specials)
    t2t_warmup_steps: int = 0  # ramp the T2T rate linearly from 0 over these steps
    t2t_weight: float = 1.0
    # Editing-stream rows: with this probability per row nothing is masked, so the row is the clean
    # sequence with only T2T noise. Decoding's "post" steps judge a fully drafted block; without such
    # rows training never shows a block without masks (t >= t_min) and the model's edits there are
    # confidently wrong (issue 22).
    t2t_stream_prob: float = 0.0
    # Loss on visible noisable tokens that are correct (target = input). Needed with T2T: otherwise
    # every visible token the model is trained on is wrong, and its edits destroy correct drafts.
    keep_weight: float = 1.0
    # How the visible streams are averaged. "pooled": L_t2t and L_keep are sums over one shared count
    # (every visible noisable token), so a wrong token weighs what a correct one does and the edit
    # confidence is calibrated to the corruption rate. "per_stream": each is its own mean, which
    # weighs each wrong token ~(1-r)/r times a correct one and makes edits over-eager (issue 22).
    visible_normalizer: str = "pooled"
    # Multi-Turn Forward: probability that a step adds a turn on the model's own draft.
    mtf_prob: float = 0.0
    # MTF only from this step on: early in training the model's own drafts are noise, not the
    # mistakes a trained model makes (issue 7: MTF from step 0 cost 17 points at 600 steps).
    mtf_start_step: int = 0
    mtf_fill_min: float = 0.25  # fraction of the first turn's masks filled with the model's draft
    mtf_fill_max: float = 1.0
    mtf_select: str = "confidence"  # confidence (like threshold decoding) | random
    mtf_temperature: float = 0.0  # 0 = arg-max drafts
    mtf_weight: float = 1.0
    complementary: bool = False  # each row twice: with its M2T mask and with the complement
    cap_weight: float = 0.0  # confidence (CAP) loss weight


@dataclass
class BlockStage:
    until_step: int  # this block length applies to steps < until_step
    block_length: int  # 0 = the whole row


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 50
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off


@dataclass
class TrainerSection:
    max_steps: int = 300
    batch_size: int = 16
    accumulate_grad_batches: int = 1
    block_length: int = 32  # 0 = the whole row (MDLM)
    block_schedule: list[BlockStage] = field(default_factory=list)  # e.g. WSD: 1 -> 4 -> 32 -> 0 -> 32
    seed: int = 0
    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # -1 = all
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp | deepspeed
    log_every_steps: int = 10
    checkpoint_every_steps: int = 100  # last.ckpt for exact resume
    val_every_steps: int = 100
    num_threads: int = 0  # torch CPU threads (0 = leave torch's default)
    resume: bool = True  # continue from <out_dir>/checkpoints/last.ckpt when it exists


@dataclass
class AveragingConfig:
    top_k: int = 0  # export the mean of the k best checkpoints by `monitor` (0 or 1 = the final weights)
    monitor: str = "val/loss"


@dataclass
class MoESection:
    bias_update_rate: float = 1e-3  # aux-loss-free balancing: bias += rate * sign(mean_load - load); 0 = off


@dataclass
class LoraSection:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["query_key_value", "dense", "gate_proj", "up_proj", "down_proj"])
    merge: bool = True  # merge the adapters into the exported weights


@dataclass
class TrainConfig:
    stage: str = "cpt"  # cpt | sft
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    moe: MoESection = field(default_factory=MoESection)
    lora: LoraSection = field(default_factory=LoraSection)

    def __post_init__(self) -> None:
        validate_train_config(self)


def _fail(key: str, message: str) -> None:
    raise ValueError(f"train.{key}: {message}")


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        _fail(key, f"must be one of {list(allowed)}, got {value!r}")


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        _fail(key, f"must be in [0, 1], got {value}")


def validate_train_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first invalid field (before any data is read or model built)."""
    _choice("stage", cfg.stage, STAGES)
    _choice("model.preset", cfg.model.preset, PRESETS)
    _choice("model.gradient_checkpointing", cfg.model.gradient_checkpointing, ("auto", "on", "off"))
    o = cfg.objective
    _fraction("objective.t_min", o.t_min)
    _fraction("objective.t_max", o.t_max)
    if o.t_min > o.t_max or o.t_max == 0.0:
        _fail("objective.t_min", f"need 0 <= t_min <= t_max and t_max > 0, got [{o.t_min}, {o.t_max}]")
    if o.weighting == "inv_t" and o.t_min <= 0.0:
        _fail("objective.t_min", "must be > 0 with weighting 'inv_t' (the weight is 1/t)")
    _choice("objective.noise_per", o.noise_per, NOISE_PER)
    _choice("objective.weighting", o.weighting, WEIGHTINGS)
    _fraction("objective.t2t_rate_min", o.t2t_rate_min)
    _fraction("objective.t2t_rate_max", o.t2t_rate_max)
    _fraction("objective.t2t_stream_prob", o.t2t_stream_prob)
    if o.t2t_rate_min > o.t2t_rate_max:
        _fail("objective.t2t_rate_min", f"exceeds t2t_rate_max ({o.t2t_rate_min} > {o.t2t_rate_max})")
    _choice("objective.t2t_source", o.t2t_source, T2T_SOURCES)
    _choice("objective.visible_normalizer", o.visible_normalizer, VISIBLE_NORMALIZERS)
    _fraction("objective.mtf_prob", o.mtf_prob)
    _fraction("objective.mtf_fill_min", o.mtf_fill_min)
    _fraction("objective.mtf_fill_max", o.mtf_fill_max)
    if o.mtf_fill_min > o.mtf_fill_max:
        _fail("objective.mtf_fill_min", f"exceeds mtf_fill_max ({o.mtf_fill_min} > {o.mtf_fill_max})")
    _choice("objective.mtf_select", o.mtf_select, MTF_SELECT)
    if not isinstance(o.mtf_start_step, int) or o.mtf_start_step < 0:
        _fail("objective.mtf_start_step", f"must be a non-negative integer, got {o.mtf_start_step!r}")
    for name in ("t2t_weight", "keep_weight", "mtf_weight", "cap_weight", "mtf_temperature"):
        if getattr(o, name) < 0:
            _fail(f"objective.{name}", f"must be >= 0, got {getattr(o, name)}")
    if o.t2t_warmup_steps < 0:
        _fail("objective.t2t_warmup_steps", f"must be >= 0, got {o.t2t_warmup_steps}")
    p = cfg.optim
    if p.lr <= 0:
        _fail("optim.lr", f"must be > 0, got {p.lr}")
    _fraction("optim.min_lr_ratio", p.min_lr_ratio)
    if len(p.betas) != 2 or not all(0.0 <= b < 1.0 for b in p.betas):
        _fail("optim.betas", f"must be two numbers in [0, 1), got {list(p.betas)}")
    for name in ("warmup_steps", "weight_decay", "grad_clip", "eps"):
        if getattr(p, name) < 0:
            _fail(f"optim.{name}", f"must be >= 0, got {getattr(p, name)}")
    t = cfg.trainer
    for name in ("max_steps", "batch_size", "accumulate_grad_batches", "log_every_steps",
                 "checkpoint_every_steps", "val_every_steps", "num_nodes"):
        if getattr(t, name) < 1:
            _fail(f"trainer.{name}", f"must be >= 1, got {getattr(t, name)}")
    if t.block_length < 0:
        _fail("trainer.block_length", f"must be >= 0 (0 = whole row), got {t.block_length}")
    last = 0
    for i, s in enumerate(t.block_schedule):
        if s.block_length < 0:
            _fail(f"trainer.block_schedule[{i}].block_length", f"must be >= 0 (0 = whole row), got {s.block_length}")
        if s.until_step <= last:
            _fail(f"trainer.block_schedule[{i}].until_step", f"must increase and be > {last}, got {s.until_step}")
        last = s.until_step
    _choice("trainer.precision", t.precision, PRECISIONS)
    _choice("trainer.accelerator", t.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
    _choice("trainer.strategy", t.strategy, STRATEGIES)
    if t.devices == 0 or t.devices < -1:
        _fail("trainer.devices", f"must be >= 1 or -1 (all), got {t.devices}")
    if t.num_threads < 0:
        _fail("trainer.num_threads", f"must be >= 0, got {t.num_threads}")
    d = cfg.data
    if not 0.0 <= d.val_fraction < 1.0:
        _fail("data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
    if d.val_max_rows < 1:
        _fail("data.val_max_rows", f"must be >= 1, got {d.val_max_rows}")
    if d.num_workers < 0:
        _fail("data.num_workers", f"must be >= 0, got {d.num_workers}")
    if cfg.averaging.top_k < 0:
        _fail("averaging.top_k", f"must be >= 0, got {cfg.averaging.top_k}")
    if cfg.averaging.top_k > 1 and d.val_fraction == 0.0 and cfg.averaging.monitor.startswith("val/"):
        _fail("averaging.top_k", f"averaging by {cfg.averaging.monitor!r} needs validation data (data.val_fraction > 0)")
    if cfg.moe.bias_update_rate < 0:
        _fail("moe.bias_update_rate", f"must be >= 0, got {cfg.moe.bias_update_rate}")
    lo = cfg.lora
    if lo.enabled:
        if lo.r < 1 or lo.alpha < 1:
            _fail("lora.r", f"r and alpha must be >= 1, got r={lo.r}, alpha={lo.alpha}")
        _fraction("lora.dropout", lo.dropout)
        if not lo.target_modules:
            _fail("lora.target_modules", "is empty")
