"""Schema of the CPT / SFT training stage (defaults live in `conf/train/*.yaml`).

Loaded with `components.config.load_config(TrainConfig, yaml, overrides)`: unknown keys and wrong
types fail with their key path; `__post_init__` checks values and names the field (`train.objective.t_min`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.config import ConfigError, check_choice, check_fraction, check_min, check_positive, conf_defaults, fail

STAGES = ("cpt", "sft")
PRESETS = ("tiny", "tiny_moe")
WEIGHTINGS = ("none", "inv_t")
NOISE_PER = ("sequence", "block")
T2T_SOURCES = ("uniform", "batch", "row")
VISIBLE_NORMALIZERS = ("pooled", "per_stream")
MTF_SELECT = ("confidence", "random")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")


@dataclass
@conf_defaults("train/default.yaml", "model")
class ModelSection:
    init_from: str | None  # a checkpoint folder (HF layout) to start from; None = random init
    preset: str  # ModelConfig preset used when init_from is None
    # ModelConfig fields over the preset (e.g. hidden_size: 64). Special ids and the vocabulary size
    # come from the tokenizer unless set here.
    overrides: dict[str, Any]
    gradient_checkpointing: str  # auto (on GPU only) | on | off


def model_config(section: ModelSection, tokenizer: Any = None):
    """The `model.ModelConfig` of `section.preset`: sized to the tokenizer and with its special ids when
    one is given, then `section.overrides`. Training builds its network from it; preflight checks it."""
    from model.config import ModelConfig

    fields: dict[str, Any] = {}
    if tokenizer is not None:
        fields = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id,
                  "eos_token_id": tokenizer.eos_id, "mask_token_id": tokenizer.mask_id}
    fields.update(dict(section.overrides))
    try:
        return getattr(ModelConfig, section.preset)(**fields)
    except TypeError as exc:
        raise ConfigError(f"train.model.overrides: {exc}") from exc


@dataclass
@conf_defaults("train/default.yaml", "data")
class DataSection:
    config: str  # the data-stage config (relative to the repo root or absolute)
    overrides: list[str]
    prepared: str | None  # an already prepared data directory (from the data stage); wins over config
    val_fraction: float  # rows held out of the training data for validation (0 = no validation)
    val_max_rows: int
    num_workers: int


@dataclass
@conf_defaults("train/default.yaml", "objective")
class ObjectiveConfig:
    # M2T stream: the "mask ratio bandwidth" and the loss weighting.
    t_min: float
    t_max: float
    noise_per: str  # sequence | block
    weighting: str  # none (mean over masked tokens) | inv_t (ELBO 1/t weight)
    # T2T stream: per sequence, each visible noisable token is replaced with prob r ~ U[rate_min, rate_max].
    t2t_rate_min: float
    t2t_rate_max: float
    t2t_source: str  # batch (tokens of the batch) | row (tokens of the row's own reply) | uniform (vocabulary minus specials)
    # Share of T2T replacements that are position-shift errors (an adjacent different token) rather
    # than random tokens: the off-by-one run boundaries of sequence answers.
    t2t_shift_prob: float
    t2t_warmup_steps: int  # ramp the T2T rate linearly from 0 over these steps
    t2t_weight: float
    # Editing-stream rows: with this probability per row nothing is masked, so the row is the clean
    # sequence with only T2T noise. Decoding's "post" steps judge a fully drafted block; without such
    # rows training never shows a block without masks (t >= t_min) and the model's edits there are
    # confidently wrong.
    t2t_stream_prob: float
    # Share of the editing-stream rows read in the Multi-Block Editing view: a window of up to
    # mbe_window + 1 blocks attends itself bidirectionally, as the decoder's MBE pass (mbe_window
    # there) reads it. 0 = never; a model trained without these rows
    # has never seen the MBE view, and its MBE edits break correct tokens.
    mbe_prob: float
    mbe_window: int
    # Loss on visible noisable tokens that are correct (target = input). Needed with T2T: otherwise
    # every visible token the model is trained on is wrong, and its edits destroy correct drafts.
    keep_weight: float
    # How the visible streams are averaged. "pooled": L_t2t and L_keep are sums over one shared count
    # (every visible noisable token), so a wrong token weighs what a correct one does and the edit
    # confidence is calibrated to the corruption rate. "per_stream": each is its own mean, which
    # weighs each wrong token ~(1-r)/r times a correct one and makes edits over-eager.
    visible_normalizer: str
    # Multi-Turn Forward: probability that a step adds a turn on the model's own draft.
    mtf_prob: float
    # MTF only from this step on: early in training the model's own drafts are noise, not the
    # mistakes a trained model makes, and training on them costs accuracy.
    mtf_start_step: int
    mtf_fill_min: float  # fraction of the first turn's masks filled with the model's draft
    mtf_fill_max: float
    mtf_select: str  # confidence (like threshold decoding) | random
    mtf_temperature: float  # 0 = arg-max drafts
    mtf_weight: float
    # Levenshtein blocks (LLaDA2.2 §3.1): each block gets 1..levenshtein_max_ops deletions,
    # duplications or run shifts with this probability, and its loss targets become the LCS labels
    # (tokens, DELETE, INSERT). 0 = off (no edit-control rows needed; a released model trains as before).
    levenshtein_prob: float
    levenshtein_max_ops: int
    # Loss weight of the positions labelled DELETE or INSERT (1 = the plain cross-entropy). The two
    # head rows start at zero and are a few percent of the labels; a weight above 1 pulls them harder.
    levenshtein_label_weight: float
    complementary: bool  # each row twice: with its M2T mask and with the complement
    cap_weight: float  # confidence (CAP) loss weight


@dataclass
class BlockStage:
    until_step: int  # this block length applies to steps < until_step
    block_length: int  # 0 = the whole row


@dataclass
@conf_defaults("train/default.yaml", "optim")
class OptimConfig:
    lr: float
    min_lr_ratio: float  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int
    weight_decay: float
    betas: list[float]
    eps: float
    grad_clip: float  # 0 = off


@dataclass
@conf_defaults("train/default.yaml", "trainer")
class TrainerSection:
    max_steps: int
    batch_size: int
    accumulate_grad_batches: int
    block_length: int  # 0 = the whole row (MDLM)
    block_schedule: list[BlockStage]  # e.g. WSD: 1 -> 4 -> 32 -> 0 -> 32
    seed: int
    precision: str  # auto = bf16-mixed on GPU, 32-true on CPU
    accelerator: str  # auto | cpu | gpu
    devices: int  # -1 = all
    num_nodes: int
    strategy: str  # auto | ddp | ddp_spawn | fsdp | deepspeed
    log_every_steps: int
    checkpoint_every_steps: int  # last.ckpt for exact resume
    val_every_steps: int
    num_threads: int  # torch CPU threads (0 = leave torch's default)
    resume: bool  # continue from <out_dir>/checkpoints/last.ckpt when it exists


@dataclass
@conf_defaults("train/default.yaml", "averaging")
class AveragingConfig:
    top_k: int  # export the mean of the k best checkpoints by `monitor` (0 or 1 = the final weights)
    monitor: str


@dataclass
@conf_defaults("train/default.yaml", "moe")
class MoESection:
    bias_update_rate: float  # aux-loss-free balancing: bias += rate * sign(mean_load - load); 0 = off


@dataclass
@conf_defaults("train/default.yaml", "lora")
class LoraSection:
    """peft LoRA adapters on the network's linear layers named `target_modules` (only they train). SFT
    and RL share this schema, each stage with its own defaults (`lora:` in its conf); the export always
    merges the adapters into the base weights (a plain checkpoint that every loader reads)."""

    enabled: bool
    r: int
    alpha: int
    dropout: float
    target_modules: list[str]

    def validate(self, key: str) -> None:
        """Raise ConfigError naming `key`.<field> (`key` is the section's path: train.lora, rl.lora)."""
        if not self.enabled:
            return
        check_min(f"{key}.r", self.r, 1)
        check_min(f"{key}.alpha", self.alpha, 1)
        check_fraction(f"{key}.dropout", self.dropout)
        if not self.target_modules:
            fail(f"{key}.target_modules", "is empty")


@dataclass
@conf_defaults("train/default.yaml")
class TrainConfig:
    stage: str  # cpt | sft
    model: ModelSection
    data: DataSection
    objective: ObjectiveConfig
    optim: OptimConfig
    trainer: TrainerSection
    averaging: AveragingConfig
    moe: MoESection
    lora: LoraSection

    def __post_init__(self) -> None:
        validate_train_config(self)


def validate_train_config(cfg: TrainConfig) -> None:
    """Raise ConfigError (a ValueError) naming the first invalid field (before any data is read or model built)."""
    check_choice("train.stage", cfg.stage, STAGES)
    check_choice("train.model.preset", cfg.model.preset, PRESETS)
    check_choice("train.model.gradient_checkpointing", cfg.model.gradient_checkpointing, ("auto", "on", "off"))
    o = cfg.objective
    check_fraction("train.objective.t_min", o.t_min)
    check_fraction("train.objective.t_max", o.t_max)
    if o.t_min > o.t_max or o.t_max == 0.0:
        fail("train.objective.t_min", f"need 0 <= t_min <= t_max and t_max > 0, got [{o.t_min}, {o.t_max}]")
    if o.weighting == "inv_t" and o.t_min <= 0.0:
        fail("train.objective.t_min", "must be > 0 with weighting 'inv_t' (the weight is 1/t)")
    check_choice("train.objective.noise_per", o.noise_per, NOISE_PER)
    check_choice("train.objective.weighting", o.weighting, WEIGHTINGS)
    check_fraction("train.objective.t2t_rate_min", o.t2t_rate_min)
    check_fraction("train.objective.t2t_rate_max", o.t2t_rate_max)
    check_fraction("train.objective.t2t_stream_prob", o.t2t_stream_prob)
    check_fraction("train.objective.t2t_shift_prob", o.t2t_shift_prob)
    check_fraction("train.objective.mbe_prob", o.mbe_prob)
    if not isinstance(o.mbe_window, int) or o.mbe_window < 1:
        fail("train.objective.mbe_window", f"must be an integer >= 1 (blocks before the last one), got {o.mbe_window!r}")
    if o.mbe_prob > 0.0 and o.t2t_stream_prob == 0.0:
        fail("train.objective.mbe_prob", "needs train.objective.t2t_stream_prob > 0 (MBE rows are editing-stream rows)")
    if o.t2t_rate_min > o.t2t_rate_max:
        fail("train.objective.t2t_rate_min", f"exceeds t2t_rate_max ({o.t2t_rate_min} > {o.t2t_rate_max})")
    check_choice("train.objective.t2t_source", o.t2t_source, T2T_SOURCES)
    check_choice("train.objective.visible_normalizer", o.visible_normalizer, VISIBLE_NORMALIZERS)
    check_fraction("train.objective.levenshtein_prob", o.levenshtein_prob)
    if not isinstance(o.levenshtein_max_ops, int) or o.levenshtein_max_ops < 1:
        fail("train.objective.levenshtein_max_ops", f"must be an integer >= 1, got {o.levenshtein_max_ops!r}")
    if o.levenshtein_prob > 0.0 and o.mtf_prob > 0.0:
        fail("train.objective.levenshtein_prob", "needs train.objective.mtf_prob = 0 (an MTF turn drafts from the "
             "first turn's logits, which Levenshtein blocks predict for shifted positions)")
    check_fraction("train.objective.mtf_prob", o.mtf_prob)
    check_fraction("train.objective.mtf_fill_min", o.mtf_fill_min)
    check_fraction("train.objective.mtf_fill_max", o.mtf_fill_max)
    if o.mtf_fill_min > o.mtf_fill_max:
        fail("train.objective.mtf_fill_min", f"exceeds mtf_fill_max ({o.mtf_fill_min} > {o.mtf_fill_max})")
    check_choice("train.objective.mtf_select", o.mtf_select, MTF_SELECT)
    if not isinstance(o.mtf_start_step, int) or o.mtf_start_step < 0:
        fail("train.objective.mtf_start_step", f"must be a non-negative integer, got {o.mtf_start_step!r}")
    for name in ("t2t_weight", "keep_weight", "mtf_weight", "cap_weight", "mtf_temperature", "levenshtein_label_weight"):
        check_min(f"train.objective.{name}", getattr(o, name), 0)
    if o.levenshtein_label_weight != 1.0 and o.levenshtein_prob == 0.0:
        fail("train.objective.levenshtein_label_weight", f"is {o.levenshtein_label_weight} but only Levenshtein blocks "
             "carry DELETE/INSERT labels; set train.objective.levenshtein_prob > 0 or leave the weight at 1")
    check_min("train.objective.t2t_warmup_steps", o.t2t_warmup_steps, 0)
    p = cfg.optim
    check_positive("train.optim.lr", p.lr)
    check_fraction("train.optim.min_lr_ratio", p.min_lr_ratio)
    if len(p.betas) != 2 or not all(0.0 <= b < 1.0 for b in p.betas):
        fail("train.optim.betas", f"must be two numbers in [0, 1), got {list(p.betas)}")
    for name in ("warmup_steps", "weight_decay", "grad_clip", "eps"):
        check_min(f"train.optim.{name}", getattr(p, name), 0)
    t = cfg.trainer
    for name in ("max_steps", "batch_size", "accumulate_grad_batches", "log_every_steps",
                 "checkpoint_every_steps", "val_every_steps", "num_nodes"):
        check_min(f"train.trainer.{name}", getattr(t, name), 1)
    check_min("train.trainer.block_length", t.block_length, 0, note=" (0 = whole row)")
    last = 0
    for i, s in enumerate(t.block_schedule):
        check_min(f"train.trainer.block_schedule[{i}].block_length", s.block_length, 0, note=" (0 = whole row)")
        if s.until_step <= last:
            fail(f"train.trainer.block_schedule[{i}].until_step", f"must increase and be > {last}, got {s.until_step}")
        last = s.until_step
    check_choice("train.trainer.precision", t.precision, PRECISIONS)
    check_choice("train.trainer.accelerator", t.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
    check_choice("train.trainer.strategy", t.strategy, STRATEGIES)
    if t.devices == 0 or t.devices < -1:
        fail("train.trainer.devices", f"must be >= 1 or -1 (all), got {t.devices}")
    check_min("train.trainer.num_threads", t.num_threads, 0)
    d = cfg.data
    check_fraction("train.data.val_fraction", d.val_fraction, include_one=False)
    check_min("train.data.val_max_rows", d.val_max_rows, 1)
    check_min("train.data.num_workers", d.num_workers, 0)
    check_min("train.averaging.top_k", cfg.averaging.top_k, 0)
    if cfg.averaging.top_k > 1 and d.val_fraction == 0.0 and cfg.averaging.monitor.startswith("val/"):
        fail("train.averaging.top_k", f"averaging by {cfg.averaging.monitor!r} needs validation data (data.val_fraction > 0)")
    check_min("train.moe.bias_update_rate", cfg.moe.bias_update_rate, 0)
    cfg.lora.validate("train.lora")
    if o.levenshtein_prob > 0.0 and cfg.lora.enabled and "lm_head" not in cfg.lora.target_modules:
        fail("train.objective.levenshtein_prob", "with train.lora.enabled the new DELETE/INSERT head rows stay frozen "
             "at their zero start: add lm_head to train.lora.target_modules or turn LoRA off")
