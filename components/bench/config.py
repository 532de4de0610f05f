"""Schema of the throughput benchmark (defaults in `conf/bench/*.yaml`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

QUANTS = ("none", "fp8", "int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")


class BenchmarkError(ValueError):
    """A benchmark cannot run as configured (bad setting, model folder, memory); names the culprit."""


@dataclass
class PromptSetConfig:
    """Where the prompts come from: a task config (scored) or random token ids (speed only)."""

    task: Optional[str] = "sum"  # a name in conf/task/ or a task YAML path; null = random token prompts
    task_overrides: list[str] = field(default_factory=list)  # dotlist applied to the task config
    num_prompts: int = 16
    tokenizer: Optional[str] = None  # folder with tokenizer.json; null = the model folder
    use_task_decode: bool = True  # apply the task's decode overrides (e.g. its gen_length)
    random_min_length: int = 8  # task: null only
    random_max_length: int = 40
    seed: int = 0


@dataclass
class SettingConfig:
    """One decoding setting measured by the benchmark."""

    name: Optional[str] = None  # default: <mode>_b<batch_size>[_<quant>]
    mode: str = "speedy"  # decoding preset in conf/decode/ (S = speedy, Q = quality)
    batch_size: int = 1
    quant: str = "none"  # none | fp8 | int8_dynamic | int8_weight_only | int8_dynamic_fbgemm
    decode: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields

    @property
    def label(self) -> str:
        return self.name or f"{self.mode}_b{self.batch_size}" + ("" if self.quant == "none" else f"_{self.quant}")


@dataclass
class BaselineConfig:
    """The two baselines of design §9 (same weights, same run)."""

    reference: bool = True  # reference-style loop: batch 1, no cache, whole prefix every step
    autoregressive: bool = True  # one token per forward (our decoder, cache on, batch 1)
    mode: str = "quality"  # the preset whose thresholds/lengths the reference loop uses
    max_prompts: Optional[int] = 4  # the reference loop is slow: the first N prompts (null = all)
    repeats: Optional[int] = None  # null = the benchmark's repeats


def _default_settings() -> list[SettingConfig]:
    return [SettingConfig(mode=m, batch_size=b) for b in (1, 8) for m in ("speedy", "quality")]


@dataclass
class BenchConfig:
    prompts: PromptSetConfig = field(default_factory=PromptSetConfig)
    settings: list[SettingConfig] = field(default_factory=_default_settings)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    decode: dict[str, Any] = field(default_factory=dict)  # overrides for every setting and baseline
    repeats: int = 3  # timed runs per setting; medians are reported
    warmup: int = 1  # untimed runs of the first batch before timing
    threads: Optional[int] = None  # torch.set_num_threads for the run (null = leave as is)
    device: str = "cpu"  # cpu | cuda | auto
    dtype: Optional[str] = None  # float32 | bfloat16 | float16 | null (as stored)
    memory_limit_mb: Optional[float] = None  # null = the memory available when the run starts
    resume: bool = True  # keep settings already completed in out_dir (same fingerprint)
    # Run the repeats round-robin over the settings (all settings finish together at the end), so
    # that load from other processes on a shared machine hits every setting alike. Trade-off: an
    # interruption then loses every setting of the interleaved group (none has finished yet).
    interleave: bool = False
    quant_skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])
    fp8_block_size: list[int] = field(default_factory=lambda: [128, 128])

    def __post_init__(self) -> None:
        validate_bench_config(self)


def validate_bench_config(cfg: BenchConfig) -> None:
    """Checks the schema cannot express; each error names the key."""
    def fail(key: str, message: str) -> None:
        raise BenchmarkError(f"bench.{key}: {message}")

    if not cfg.settings:
        fail("settings", "needs at least one decoding setting")
    labels = []
    for i, s in enumerate(cfg.settings):
        if s.batch_size < 1:
            fail(f"settings[{i}].batch_size", f"must be >= 1, got {s.batch_size}")
        if s.quant not in QUANTS:
            fail(f"settings[{i}].quant", f"must be one of {QUANTS}, got {s.quant!r}")
        if not s.mode:
            fail(f"settings[{i}].mode", "must name a decoding preset (speedy, quality)")
        if s.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", s.name):
            fail(f"settings[{i}].name", f"must be letters, digits, '_', '-', '.', got {s.name!r}")
        for key in ("max_batch_size", "use_cache"):
            if key in s.decode:
                fail(f"settings[{i}].decode.{key}", "is set by the benchmark (use batch_size)")
        labels.append(s.label)
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        fail("settings", f"setting names must be unique; repeated: {duplicates} (give them a name)")
    reserved = {"reference", "autoregressive"} & set(labels)
    if reserved:
        fail("settings", f"{sorted(reserved)} are the baselines' names; name the setting differently")
    if cfg.repeats < 1:
        fail("repeats", f"must be >= 1, got {cfg.repeats}")
    if cfg.warmup < 0:
        fail("warmup", f"must be >= 0, got {cfg.warmup}")
    if cfg.threads is not None and cfg.threads < 1:
        fail("threads", f"must be >= 1 or null, got {cfg.threads}")
    if cfg.device not in DEVICES:
        fail("device", f"must be one of {DEVICES}, got {cfg.device!r}")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        fail("dtype", f"must be one of {DTYPES} or null, got {cfg.dtype!r}")
    if cfg.memory_limit_mb is not None and cfg.memory_limit_mb <= 0:
        fail("memory_limit_mb", f"must be > 0 or null, got {cfg.memory_limit_mb}")
    p = cfg.prompts
    if p.num_prompts < 1:
        fail("prompts.num_prompts", f"must be >= 1, got {p.num_prompts}")
    if not 1 <= p.random_min_length <= p.random_max_length:
        fail("prompts.random_min_length", f"need 1 <= random_min_length <= random_max_length, got "
                                          f"{p.random_min_length}, {p.random_max_length}")
    b = cfg.baselines
    if (b.reference or b.autoregressive) and not b.mode:
        fail("baselines.mode", "must name a decoding preset")
    if b.max_prompts is not None and b.max_prompts < 1:
        fail("baselines.max_prompts", f"must be >= 1 or null, got {b.max_prompts}")
    if b.repeats is not None and b.repeats < 1:
        fail("baselines.repeats", f"must be >= 1 or null, got {b.repeats}")
    if len(cfg.fp8_block_size) != 2 or min(cfg.fp8_block_size) < 1:
        fail("fp8_block_size", f"must be two positive integers, got {list(cfg.fp8_block_size)}")
