"""Schema of the data-preparation stage (its defaults live in `conf/data/default.yaml`).

Validation names the full key path (`data.cpt.external[1].path`) so a bad config stops before any
corpus is read or tokenizer trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.config import check_choice, check_min, conf_defaults, fail

EXTERNAL_KINDS = ("file", "hub")
FILE_FORMATS = ("auto", "json", "parquet", "csv", "text")
TOO_LONG_POLICIES = ("error", "truncate", "drop")
FILL_POLICIES = ("eos", "pad")


@dataclass
@conf_defaults("data/default.yaml", "cpt.stdlib")
class StdlibSource:
    """The Python standard library's .py files on this machine (no network): a seeded subset
    within the file-count and byte budgets, one document per file (CPT only)."""

    enabled: bool
    max_files: int
    max_bytes: int
    max_file_bytes: int
    seed: int


@dataclass
@conf_defaults("data/default.yaml", "cpt.synthetic")
class SyntheticSource:
    """Train-split instances of synthetic task families (components.families): CPT gets
    "prompt\nanswer" documents, SFT a user/assistant conversation."""

    enabled: bool
    families: list[str]
    num_examples: int  # per family
    seed: int
    # per-family size / difficulty fields, e.g. {sudoku4: {min_clues: 4, max_clues: 6}}
    params: dict[str, Any]


@dataclass
@conf_defaults("data/defaults/external.yaml")
class ExternalSource:
    """Local files (`kind: file`, `path` may be a glob; JSONL/JSON/parquet/CSV/text) or a Hugging Face
    hub dataset (`kind: hub`, `path` = its name; needs network), read with `datasets`.
    CPT reads `text_field` (text files: one document per file); SFT reads `messages_field`
    (a list of {role, content}) or, when absent, `prompt_field` + `response_field`."""

    kind: str
    path: str
    format: str
    name: str | None  # hub config name
    split: str  # hub split
    text_field: str
    messages_field: str
    prompt_field: str
    response_field: str
    max_examples: int  # keep at most this many records (0 = all)


@dataclass
@conf_defaults("data/default.yaml", "tokenizer")
class TokenizerConfig:
    path: str | None  # a checkpoint's tokenizer directory; None = train byte-level BPE on the corpus
    vocab_size: int
    min_frequency: int
    max_train_bytes: int  # corpus bytes fed to the BPE trainer


@dataclass
@conf_defaults("data/default.yaml", "cpt")
class CPTConfig:
    enabled: bool
    seq_len: int  # packed row length (a multiple of block_length, at most max_seq_len)
    align_documents: bool  # start every document at a block boundary (pads the gap)
    stdlib: StdlibSource
    synthetic: SyntheticSource
    external: list[ExternalSource]


@dataclass
@conf_defaults("data/default.yaml", "sft")
class SFTConfig:
    enabled: bool
    # Tokens after the reply up to the next block boundary: "eos" = EOS in the loss (the model learns
    # to end answers, as LLaDA's SFT does), "pad" = pad id outside the loss.
    fill: str
    # A conversation longer than max_seq_len: "error" stops, "truncate" keeps the first max_seq_len
    # tokens (dropped if no reply token is left), "drop" skips it. Counts are recorded in the manifest.
    too_long: str
    synthetic: SyntheticSource
    external: list[ExternalSource]


@dataclass
@conf_defaults("data/default.yaml")
class DataConfig:
    cache_dir: str
    block_length: int  # the target (largest) training block size; lengths are padded to multiples
    max_seq_len: int  # the model's limit for one sequence (before the x_t ⊕ x_0 doubling)
    tokenizer: TokenizerConfig
    cpt: CPTConfig
    sft: SFTConfig

    def __post_init__(self) -> None:
        validate_data_config(self)


def validate_data_config(cfg: DataConfig) -> None:
    """Raise ConfigError (a ValueError) naming the key path of the first invalid value."""
    check_min("data.block_length", cfg.block_length, 1)
    if cfg.max_seq_len < cfg.block_length or cfg.max_seq_len % cfg.block_length:
        fail("data.max_seq_len", f"must be a positive multiple of block_length ({cfg.block_length}), got {cfg.max_seq_len}")
    tok = cfg.tokenizer
    if tok.path is None:
        check_min("data.tokenizer.vocab_size", tok.vocab_size, 300, note=" (256 bytes + special tokens)")
        check_min("data.tokenizer.min_frequency", tok.min_frequency, 1)
        check_min("data.tokenizer.max_train_bytes", tok.max_train_bytes, 1)
    if cfg.cpt.enabled and (cfg.cpt.seq_len < cfg.block_length or cfg.cpt.seq_len % cfg.block_length):
        fail("data.cpt.seq_len", f"must be a positive multiple of block_length ({cfg.block_length}), got {cfg.cpt.seq_len}")
    if cfg.cpt.enabled and cfg.cpt.seq_len > cfg.max_seq_len:
        fail("data.cpt.seq_len", f"({cfg.cpt.seq_len}) exceeds max_seq_len ({cfg.max_seq_len})")
    check_choice("data.sft.fill", cfg.sft.fill, FILL_POLICIES)
    check_choice("data.sft.too_long", cfg.sft.too_long, TOO_LONG_POLICIES)
    if not (cfg.cpt.enabled or cfg.sft.enabled):
        fail("data.cpt.enabled", "both cpt and sft are disabled: nothing to prepare")
    for stage in ("cpt", "sft"):
        if getattr(cfg, stage).enabled and not stage_sources(cfg, stage):
            fail(f"data.{stage}", "is enabled but has no enabled source (stdlib / synthetic / external)")
        for key, src in stage_sources(cfg, stage):
            _validate_source(key, src)


def stage_sources(cfg: DataConfig, stage: str) -> list[tuple[str, object]]:
    """(key path, source) of the enabled sources of `stage` ("cpt" or "sft"), in reading order."""
    stage_cfg = getattr(cfg, stage)
    if not stage_cfg.enabled:
        return []
    out: list[tuple[str, object]] = []
    if stage == "cpt" and stage_cfg.stdlib.enabled:
        out.append((f"{stage}.stdlib", stage_cfg.stdlib))
    if stage_cfg.synthetic.enabled:
        out.append((f"{stage}.synthetic", stage_cfg.synthetic))
    out.extend((f"{stage}.external[{i}]", src) for i, src in enumerate(stage_cfg.external))
    return out


def _validate_source(key: str, src: object) -> None:
    if isinstance(src, StdlibSource):
        for name in ("max_files", "max_bytes", "max_file_bytes"):
            check_min(f"data.{key}.{name}", getattr(src, name), 1)
    elif isinstance(src, SyntheticSource):
        from components.families import SYNTHETIC_FAMILIES

        if not src.families:
            fail(f"data.{key}.families", "is empty (disable the source with enabled=false instead)")
        unknown = [f for f in src.families if f not in SYNTHETIC_FAMILIES]
        if unknown:
            fail(f"data.{key}.families", f"unknown {unknown}; known: {sorted(SYNTHETIC_FAMILIES)}")
        check_min(f"data.{key}.num_examples", src.num_examples, 1)
        for fam, params in src.params.items():
            if fam not in src.families:
                fail(f"data.{key}.params.{fam}", f"is not one of the selected families {list(src.families)}")
            if not isinstance(params, dict):
                fail(f"data.{key}.params.{fam}", f"must be a mapping of family fields, got {params!r}")
            try:
                from components.families import get_family

                get_family(fam, **params)
            except (ValueError, TypeError) as exc:
                fail(f"data.{key}.params.{fam}", str(exc))
    elif isinstance(src, ExternalSource):
        check_choice(f"data.{key}.kind", src.kind, EXTERNAL_KINDS)
        if not src.path:
            fail(f"data.{key}.path", f"is required for kind {src.kind!r}")
        check_choice(f"data.{key}.format", src.format, FILE_FORMATS)
        check_min(f"data.{key}.max_examples", src.max_examples, 0)
    else:
        raise TypeError(f"{key}: unexpected source type {type(src).__name__}")
