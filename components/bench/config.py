"""Schema of the throughput benchmark (defaults in `conf/bench/*.yaml`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from components.config import ConfigError, check_choice, check_min, check_positive, conf_defaults, conf_names, fail
from components.presets import DecodeChoice

QUANTS = ("none", "fp8", "int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")


class BenchmarkError(ConfigError):
    """A benchmark cannot run as configured (bad setting, model folder, memory); names the culprit."""


@dataclass
@conf_defaults("bench/default.yaml", "prompts")
class PromptSetConfig:
    """Where the prompts come from: a task config (scored) or random token ids (speed only)."""

    task: Optional[str]  # a name in conf/task/ or a task YAML path; null = random token prompts
    task_overrides: list[str]  # dotlist applied to the task config
    num_prompts: int
    tokenizer: Optional[str]  # folder with tokenizer.json; null = the model folder
    use_task_decode: bool  # apply the task's decode overrides (e.g. its gen_length)
    random_min_length: int  # task: null only
    random_max_length: int
    seed: int


@dataclass
@conf_defaults("bench/defaults/setting.yaml")
class SettingConfig:
    """One decoding setting measured by the benchmark."""

    name: Optional[str]  # default: <preset>_b<batch_size>[_<quant>]
    decode: DecodeChoice  # decoding preset in conf/decode/ (S = speedy, Q = quality) and its overrides
    batch_size: int
    quant: str  # none | fp8 | int8_dynamic | int8_weight_only | int8_dynamic_fbgemm

    @property
    def label(self) -> str:
        suffix = "" if self.quant == "none" else f"_{self.quant}"
        return self.name or f"{self.decode.preset}_b{self.batch_size}{suffix}"


@dataclass
@conf_defaults("bench/default.yaml", "baselines")
class BaselineConfig:
    """The two baselines of design §9 (same weights, same run)."""

    reference: bool  # reference-style loop: batch 1, no cache, whole prefix every step
    autoregressive: bool  # one token per forward (our decoder, cache on, batch 1)
    preset: str  # the preset whose thresholds/lengths the reference loop uses
    max_prompts: Optional[int]  # the reference loop is slow: the first N prompts (null = all)
    repeats: Optional[int]  # null = the benchmark's repeats


@dataclass
@conf_defaults("bench/default.yaml")
class BenchConfig:
    prompts: PromptSetConfig
    settings: list[SettingConfig]
    baselines: BaselineConfig
    decode_overrides: dict[str, Any]  # under every setting's and baseline's preset
    repeats: int  # timed runs per setting; medians are reported
    warmup: int  # untimed runs of the first batch before timing
    threads: Optional[int]  # torch.set_num_threads for the run (null = leave as is)
    device: str  # cpu | cuda | auto
    dtype: Optional[str]  # float32 | bfloat16 | float16 | null (as stored)
    memory_limit_mb: Optional[float]  # null = the memory available when the run starts
    resume: bool  # keep settings already completed in out_dir (same fingerprint)
    # Run the repeats round-robin over the settings (all settings finish together at the end), so
    # that load from other processes on a shared machine hits every setting alike. Trade-off: an
    # interruption then loses every setting of the interleaved group (none has finished yet).
    interleave: bool
    quant_skip_modules: list[str]
    fp8_block_size: list[int]

    def __post_init__(self) -> None:
        validate_bench_config(self)


def validate_bench_config(cfg: BenchConfig) -> None:
    """Checks the schema cannot express; each error names the key."""
    if not cfg.settings:
        fail("bench.settings", "needs at least one decoding setting")
    labels = []
    for i, s in enumerate(cfg.settings):
        if s.batch_size < 1:
            fail(f"bench.settings[{i}].batch_size", f"must be >= 1, got {s.batch_size}")
        if s.quant not in QUANTS:
            fail(f"bench.settings[{i}].quant", f"must be one of {QUANTS}, got {s.quant!r}")
        if s.decode.preset not in conf_names("decode"):
            fail(f"bench.settings[{i}].decode.preset",
                 f"unknown decoding preset {s.decode.preset!r}; known: {conf_names('decode')}")
        if s.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", s.name):
            fail(f"bench.settings[{i}].name", f"must be letters, digits, '_', '-', '.', got {s.name!r}")
        for key in ("max_batch_size", "use_cache"):
            if key in s.decode.overrides:
                fail(f"bench.settings[{i}].decode.overrides.{key}", "is set by the benchmark (use batch_size)")
        labels.append(s.label)
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        fail("bench.settings", f"setting names must be unique; repeated: {duplicates} (give them a name)")
    reserved = {"reference", "autoregressive"} & set(labels)
    if reserved:
        fail("bench.settings", f"{sorted(reserved)} are the baselines' names; name the setting differently")
    check_min("bench.repeats", cfg.repeats, 1)
    check_min("bench.warmup", cfg.warmup, 0)
    check_min("bench.threads", cfg.threads, 1, allow_none=True)
    check_choice("bench.device", cfg.device, DEVICES)
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        fail("bench.dtype", f"must be one of {DTYPES} or null, got {cfg.dtype!r}")
    check_positive("bench.memory_limit_mb", cfg.memory_limit_mb, allow_none=True)
    p = cfg.prompts
    check_min("bench.prompts.num_prompts", p.num_prompts, 1)
    if not 1 <= p.random_min_length <= p.random_max_length:
        fail("bench.prompts.random_min_length", f"need 1 <= random_min_length <= random_max_length, got "
                                                f"{p.random_min_length}, {p.random_max_length}")
    b = cfg.baselines
    if (b.reference or b.autoregressive) and b.preset not in conf_names("decode"):
        fail("bench.baselines.preset", f"unknown decoding preset {b.preset!r}; known: {conf_names('decode')}")
    if b.max_prompts is not None and b.max_prompts < 1:
        fail("bench.baselines.max_prompts", f"must be >= 1 or null, got {b.max_prompts}")
    if b.repeats is not None and b.repeats < 1:
        fail("bench.baselines.repeats", f"must be >= 1 or null, got {b.repeats}")
    if len(cfg.fp8_block_size) != 2 or min(cfg.fp8_block_size) < 1:
        fail("bench.fp8_block_size", f"must be two positive integers, got {list(cfg.fp8_block_size)}")


# ---------------------------------------------------------------------------------------- gpu-check
GPU_CHECK_DEVICES = ("cuda", "cpu")


@dataclass
@conf_defaults("bench/gpu_check.yaml", "decode")
class GpuCheckDecode:
    """Decoder throughput with a fixed number of tokens per forward (random weights commit nothing
    by confidence, so the fallback count decides every step)."""

    preset: str  # conf/decode/ preset
    batch_sizes: list[int]
    prompt_length: int  # whole blocks
    gen_length: int  # whole blocks
    block_length: int
    tokens_per_forward: int  # divides block_length
    warmup: int
    repeats: int
    sampled_batch_size: int
    temperature: float  # the sampled check's (> 0)
    graphs_batch_size: int  # the CUDA-graph check's batch (static shapes alone on a CPU)


@dataclass
@conf_defaults("bench/gpu_check.yaml", "attention")
class GpuCheckAttention:
    batch_size: int
    max_rel_error: float


@dataclass
@conf_defaults("bench/gpu_check.yaml", "fp8")
class GpuCheckFP8:
    tokens: int
    block_size: list[int]
    warmup: int
    repeats: int
    max_rel_error: float  # vs the bf16 product
    max_kernel_error: float  # vs the exact product of the same FP8 operands


@dataclass
@conf_defaults("bench/gpu_check.yaml", "train")
class GpuCheckTrain:
    config: str  # a train config YAML (objective, optimiser, LoRA, precision, checkpointing)
    overrides: list[str]
    batch_size: int
    seq_len: int
    prompt_length: int
    warmup_steps: int
    steps: int
    full_layers: Optional[int]  # full SFT at the checkpoint's width with this many layers (null = all)


@dataclass
@conf_defaults("bench/gpu_check.yaml")
class GpuCheckConfig:
    like: str  # conf/standin/ name or YAML
    shape: str  # full | conf/standin/shapes/ name | YAML
    device: str  # cuda | cpu
    dtype: str
    seed: int
    budget_s: float
    decode: GpuCheckDecode
    attention: GpuCheckAttention
    fp8: GpuCheckFP8
    train: GpuCheckTrain

    def __post_init__(self) -> None:
        validate_gpu_check_config(self)


def validate_gpu_check_config(cfg: GpuCheckConfig) -> None:
    """Checks the schema cannot express; each error names the key."""
    check_choice("gpu_check.device", cfg.device, GPU_CHECK_DEVICES)
    check_choice("gpu_check.dtype", cfg.dtype, DTYPES)
    check_positive("gpu_check.budget_s", cfg.budget_s)
    d = cfg.decode
    if d.preset not in conf_names("decode"):
        fail("gpu_check.decode.preset", f"unknown decoding preset {d.preset!r}; known: {conf_names('decode')}")
    if not d.batch_sizes or min(d.batch_sizes) < 1 or len(set(d.batch_sizes)) != len(d.batch_sizes):
        fail("gpu_check.decode.batch_sizes", f"must be distinct integers >= 1, got {list(d.batch_sizes)}")
    for name in ("block_length", "tokens_per_forward", "prompt_length", "gen_length", "repeats",
                 "sampled_batch_size", "graphs_batch_size"):
        check_min(f"gpu_check.decode.{name}", getattr(d, name), 1)
    check_min("gpu_check.decode.warmup", d.warmup, 0)
    for name in ("prompt_length", "gen_length"):
        if getattr(d, name) % d.block_length:
            fail(f"gpu_check.decode.{name}", f"must be whole blocks of block_length={d.block_length}, "
                                             f"got {getattr(d, name)}")
    if d.block_length % d.tokens_per_forward:
        fail("gpu_check.decode.tokens_per_forward", f"must divide block_length={d.block_length}, "
                                                    f"got {d.tokens_per_forward}")
    check_positive("gpu_check.decode.temperature", d.temperature)
    check_min("gpu_check.attention.batch_size", cfg.attention.batch_size, 1)
    check_positive("gpu_check.attention.max_rel_error", cfg.attention.max_rel_error)
    f = cfg.fp8
    check_min("gpu_check.fp8.tokens", f.tokens, 1)
    if len(f.block_size) != 2 or min(f.block_size) < 1:
        fail("gpu_check.fp8.block_size", f"must be two positive integers, got {list(f.block_size)}")
    check_min("gpu_check.fp8.warmup", f.warmup, 0)
    check_min("gpu_check.fp8.repeats", f.repeats, 1)
    check_positive("gpu_check.fp8.max_rel_error", f.max_rel_error)
    check_positive("gpu_check.fp8.max_kernel_error", f.max_kernel_error)
    t = cfg.train
    for name in ("batch_size", "seq_len", "steps"):
        check_min(f"gpu_check.train.{name}", getattr(t, name), 1)
    check_min("gpu_check.train.warmup_steps", t.warmup_steps, 0)
    if not 0 <= t.prompt_length < t.seq_len:
        fail("gpu_check.train.prompt_length", f"must be in [0, seq_len={t.seq_len}), got {t.prompt_length}")
    check_min("gpu_check.train.full_layers", t.full_layers, 1, allow_none=True)
