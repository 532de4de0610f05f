"""Stand-in checkpoints: a released model's folder layout with random weights.

The folder holds what the release holds (config.json in its vocabulary, bf16 shards under its key
names with an index, tokenizer.json and tokenizer_config.json naming the mask token and carrying a
chat template), so every path that takes the release can run without the download: at the full shape
for GPU throughput and memory, at a scaled shape (`conf/standin/shapes/`) on a CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import ConfigError, conf_defaults, fail, resolve_conf

# Shape options (the `draftedit checkpoint init` flags and the keys of conf/standin/shapes/*.yaml)
# -> the config.json field each one sets.
SHAPE_FIELDS: dict[str, str] = {
    "layers": "num_hidden_layers",
    "dense_layers": "first_k_dense_replace",
    "experts": "num_experts",
    "shared_experts": "num_shared_experts",
    "experts_per_token": "num_experts_per_tok",
    "groups": "n_group",
    "topk_groups": "topk_group",
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "moe_intermediate": "moe_intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "vocab": "vocab_size",
    "max_positions": "max_position_embeddings",
}


@dataclass
@conf_defaults("standin/llada2.1-mini.yaml", "tokenizer")
class StandinTokenizer:
    """A BPE trained on the local standard library, with the release's special tokens and chat markup."""

    max_vocab_size: int
    min_frequency: int
    special_tokens: list[str]
    bos_token: str
    eos_token: str
    pad_token: str
    mask_token: str
    chat_template: str
    corpus_files: int
    corpus_bytes: int
    corpus_seed: int

    def __post_init__(self) -> None:
        for name in ("bos_token", "eos_token", "pad_token", "mask_token"):
            if getattr(self, name) not in self.special_tokens:
                fail(f"tokenizer.{name}", f"{getattr(self, name)!r} must be one of tokenizer.special_tokens "
                                          f"{list(self.special_tokens)}")
        if self.mask_token in (self.eos_token, self.pad_token):
            fail("tokenizer.mask_token", "must differ from eos_token and pad_token")
        for name in ("max_vocab_size", "min_frequency", "corpus_files", "corpus_bytes"):
            if getattr(self, name) < 1:
                fail(f"tokenizer.{name}", f"must be >= 1, got {getattr(self, name)}")


@dataclass
@conf_defaults("standin/llada2.1-mini.yaml")
class StandinConfig:
    config: dict[str, Any]       # the release's config.json
    tokenizer: StandinTokenizer
    shard_bytes: int
    dtype: str
    seed: int

    def __post_init__(self) -> None:
        if self.shard_bytes < 1:
            fail("shard_bytes", f"must be >= 1, got {self.shard_bytes}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            fail("dtype", f"must be one of ['bfloat16', 'float16', 'float32'], got {self.dtype!r}")


def load_standin(like: str | os.PathLike) -> StandinConfig:
    """`llada2.1-mini` (conf/standin/) or a YAML path."""
    from components.cli_errors import config_errors
    from components.config import load_config

    path = resolve_conf("standin", like, "released model")
    with config_errors(path):
        return load_config(StandinConfig, path)


def load_shape(name_or_path: str | os.PathLike) -> dict[str, int]:
    """A scaled shape (`cpu` -> conf/standin/shapes/cpu.yaml, or a YAML path): shape option -> value."""
    import yaml

    path = resolve_conf("standin/shapes", name_or_path, "stand-in shape")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of shape options ({', '.join(SHAPE_FIELDS)})")
    for key, value in data.items():
        if key not in SHAPE_FIELDS:
            raise ConfigError(f"{path}: {key!r} is not a shape option; expected one of {', '.join(SHAPE_FIELDS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path}: {key} must be a non-negative integer, got {value!r}")
    return data


def model_config(cfg: StandinConfig, shape: dict[str, int], where: str = "shape"):
    """The release's config.json with `shape` applied, as a validated ModelConfig."""
    from model.config import ModelConfig

    fields = dict(cfg.config)
    fields.update({SHAPE_FIELDS[k]: v for k, v in shape.items()})
    try:
        config = ModelConfig.from_dict(fields)
    except ValueError as exc:  # model.config.ConfigError: say which options produced the shape
        given = " ".join(f"{k}={v}" for k, v in shape.items()) or "the release's shape"
        raise ConfigError(f"{where} ({given}): {exc}") from exc
    if "rotary_dim" in config.extra:  # the release writes it; it must follow a scaled head_dim
        config.extra["rotary_dim"] = config.rotary_dim
    return config


def train_tokenizer(spec: StandinTokenizer, vocab_size: int):
    """The stand-in's tokenizer; at most min(spec.max_vocab_size, vocab_size) tokens, so every id has
    an embedding row."""
    from components.data.bpe import train_bpe_backend
    from components.data.config import StdlibSource
    from components.data.sources import read_stdlib
    from model.tokenizer import Tokenizer

    size = min(spec.max_vocab_size, vocab_size)
    floor = 256 + len(spec.special_tokens)
    if size < floor:
        raise ConfigError(f"vocab: {vocab_size} leaves no room for the byte-level BPE; expected at least "
                          f"{floor} (256 bytes + {len(spec.special_tokens)} special tokens)")
    texts = read_stdlib(StdlibSource(enabled=True, max_files=spec.corpus_files, max_bytes=spec.corpus_bytes,
                                     max_file_bytes=spec.corpus_bytes, seed=spec.corpus_seed))
    backend = train_bpe_backend(texts, size, spec.min_frequency, tuple(spec.special_tokens))
    return Tokenizer(backend, mask_token=spec.mask_token, eos_token=spec.eos_token, pad_token=spec.pad_token,
                     bos_token=spec.bos_token, chat_template=spec.chat_template, role_tokens={},
                     source="stand-in byte-level BPE")


def write_standin(cfg: StandinConfig, shape: dict[str, int], out: str | os.PathLike,
                  shard_bytes: int | None = None, seed: int | None = None) -> dict:
    """Write the stand-in folder atomically (an existing `out` is replaced only once the new one is
    complete) and check it as a reader would. Returns a summary."""
    import torch

    from model import DiffusionLM
    from model.checkpoint import check_pretrained, save_random_pretrained
    from model.files import atomic_dir
    from model.tokenizer import load_tokenizer

    config = model_config(cfg, shape)
    tokenizer = train_tokenizer(cfg.tokenizer, config.vocab_size)
    config.pad_token_id = tokenizer.pad_id
    out = Path(out)
    with atomic_dir(out) as tmp:
        written = save_random_pretrained(DiffusionLM, config, tmp, dtype=getattr(torch, cfg.dtype),
                                         seed=cfg.seed if seed is None else seed,
                                         max_shard_bytes=cfg.shard_bytes if shard_bytes is None else shard_bytes)
        tokenizer.save(tmp)
    checked = check_pretrained(DiffusionLM, out)
    reread = load_tokenizer(out)
    return {"out": str(out), "parameters": checked["elements"], "tensors": checked["tensors"],
            "shards": written["shards"], "bytes": written["bytes"], "dtype": checked["dtype"],
            "layers": config.num_hidden_layers, "moe_layers": sum(map(config.layer_is_moe,
                                                                       range(config.num_hidden_layers))),
            "experts": config.num_experts, "vocab_size": config.vocab_size,
            "tokenizer_tokens": reread.vocab_size, "mask_id": reread.mask_id, "eos_id": reread.eos_id}
