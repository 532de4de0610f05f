"""Data preparation: corpora, tokenizer training, CPT packing and SFT formatting, cached on disk."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from components.config import CONF_DIR, load_config
from components.data.bpe import train_bpe_tokenizer
from components.data.config import (
    CPTConfig,
    DataConfig,
    ExternalSource,
    SFTConfig,
    StdlibSource,
    SyntheticSource,
    TokenizerConfig,
)
from components.data.datasets import CPTDataset, SFTCollator, SFTDataset, cpt_collate
from components.data.packing import PAD_DOC, SequenceTooLongError, format_sft, pack_cpt
from components.data.prepare import PreparedData, cache_key, load_prepared, prepare_data
from components.data.sources import DataError

DEFAULT_DATA_CONFIG = CONF_DIR / "data" / "default.yaml"


def load_data_config(
    yaml_path: str | os.PathLike | None = DEFAULT_DATA_CONFIG,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> DataConfig:
    """`DataConfig` from YAML (the shipped default unless given) plus `key=value` overrides."""
    return load_config(DataConfig, yaml_path, overrides)


__all__ = [
    "CPTConfig", "CPTDataset", "DataConfig", "DataError", "DEFAULT_DATA_CONFIG", "ExternalSource", "PAD_DOC",
    "PreparedData", "SFTCollator", "SFTConfig", "SFTDataset", "SequenceTooLongError", "StdlibSource",
    "SyntheticSource", "TokenizerConfig",
    "cache_key", "cpt_collate", "format_sft", "load_data_config", "load_prepared",
    "pack_cpt", "prepare_data", "train_bpe_tokenizer",
]
