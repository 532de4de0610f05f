"""Data preparation with an on-disk cache keyed by the config.

`prepare_data(cfg)` reads the sources, trains (or loads) the tokenizer, packs CPT rows and formats
SFT rows, and stores everything under `<cache_dir>/<key>/`. The key hashes the config (minus the
cache location), a format version, and what identifies the inputs beyond the config (the selected
stdlib files, local files' size and mtime, a loaded tokenizer's bytes), so a second run with the
same config and inputs loads the result instead of redoing it. The directory is built under a
temporary name and renamed into place, so an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from components.config import to_container
from components.data.bpe import train_bpe_tokenizer
from components.data.config import DataConfig, stage_sources, validate_data_config
from components.data.datasets import CPTDataset, SFTDataset
from components.data.packing import PackedCPT, SFTRows, format_sft, pack_cpt
from components.data.sources import (
    DataError,
    cpt_documents,
    describe,
    iter_texts_for_tokenizer,
    sft_conversations,
    source_fingerprint,
)
from model.files import atomic_dir
from model.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

PREP_VERSION = 1  # bump when the prepared format or the meaning of a config field changes
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
CPT_FILE = "cpt.safetensors"
SFT_FILE = "sft.safetensors"


@dataclass
class PreparedData:
    root: Path
    tokenizer: Tokenizer
    cpt: CPTDataset | None
    sft: SFTDataset | None
    manifest: dict
    cache_hit: bool

    @property
    def tokenizer_path(self) -> Path:
        return self.root / TOKENIZER_DIR


def _tokenizer_fingerprint(path: str) -> str:
    p = Path(path)
    h = hashlib.sha256()
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        f = p / name if p.is_dir() else p.parent / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(cfg: DataConfig) -> str:
    """Hash of everything that determines the prepared data. Also checks local inputs exist."""
    config = to_container(cfg)
    config.pop("cache_dir", None)
    fingerprints: dict[str, Any] = {}
    for stage in ("cpt", "sft"):
        for key, src in stage_sources(cfg, stage):
            fingerprints[key] = source_fingerprint(key, src)
    if cfg.tokenizer.path is not None:
        fingerprints["tokenizer"] = _tokenizer_fingerprint(cfg.tokenizer.path)
    blob = json.dumps({"version": PREP_VERSION, "config": config, "inputs": fingerprints}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_data(cfg: DataConfig, *, force: bool = False) -> PreparedData:
    """Prepared data for `cfg`, from the cache when an identical preparation exists."""
    validate_data_config(cfg)  # the instance may have been changed after construction
    key = cache_key(cfg)
    root = Path(cfg.cache_dir) / key[:20]
    if not force and (root / MANIFEST).is_file():
        log.info("data: cache hit %s", root)
        return load_prepared(root, cache_hit=True)
    # Without `force`, a concurrent run that finished the same preparation first wins: its folder is kept.
    with atomic_dir(root, keep_existing=not force) as tmp:
        _build(cfg, key, tmp)
    log.info("data: prepared %s", root)
    return load_prepared(root, cache_hit=False)


def _build(cfg: DataConfig, key: str, out: Path) -> None:
    t0 = time.perf_counter()
    hf_cache = str(Path(cfg.cache_dir) / "hf")
    # 1. a given tokenizer is loaded first: a missing mask token stops before any corpus is read
    tokenizer = load_tokenizer(cfg.tokenizer.path) if cfg.tokenizer.path is not None else None

    # 2. read every source (fails on missing / empty / malformed input before heavy work)
    sources: dict[str, dict] = {}
    docs: list[str] = []
    if cfg.cpt.enabled:
        for key_i, src in stage_sources(cfg, "cpt"):
            got = cpt_documents(key_i, src, hf_cache)
            sources[key_i] = {"source": describe(key_i, src), "documents": len(got),
                              "chars": sum(map(len, got))}
            docs.extend(got)
    convs: list[list[dict]] = []
    if cfg.sft.enabled:
        for key_i, src in stage_sources(cfg, "sft"):
            got = sft_conversations(key_i, src, hf_cache)
            sources[key_i] = {"source": describe(key_i, src), "conversations": len(got)}
            convs.extend(got)
    t_read = time.perf_counter()

    # 3. tokenizer
    if tokenizer is None:
        texts = iter_texts_for_tokenizer(docs, convs, cfg.tokenizer.max_train_bytes, seed=0)
        tokenizer = train_bpe_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    t_tok = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)  # atomic_dir's temporary folder exists already
    tokenizer.save(out / TOKENIZER_DIR)
    stats: dict[str, Any] = {"sources": sources}

    # 4. CPT packing (raw text: special-token strings in documents stay plain text)
    if cfg.cpt.enabled:
        ids = tokenizer.encode_batch(docs, parse_special=False)
        packed = pack_cpt(ids, cfg.cpt.seq_len, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                          block_length=cfg.block_length, align_documents=cfg.cpt.align_documents)
        save_file({"input_ids": packed.input_ids, "doc_ids": packed.doc_ids, "loss_mask": packed.loss_mask},
                  str(out / CPT_FILE))
        real = int(packed.loss_mask.sum())
        stats["cpt"] = {"documents": len(docs), "rows": len(packed), "seq_len": cfg.cpt.seq_len,
                        "tokens": real, "pad_fraction": 1 - real / packed.loss_mask.numel()}

    # 5. SFT formatting (loss on assistant replies only)
    if cfg.sft.enabled:
        encoded = [tokenizer.encode_chat(c) for c in convs]
        rows = format_sft(encoded, max_seq_len=cfg.max_seq_len, block_length=cfg.block_length,
                          eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, fill=cfg.sft.fill,
                          too_long=cfg.sft.too_long, where="data.sft")
        save_file({"input_ids": rows.input_ids, "prompt_mask": rows.prompt_mask, "loss_mask": rows.loss_mask,
                   "doc_ids": rows.doc_ids, "offsets": rows.offsets}, str(out / SFT_FILE))
        lengths = (rows.offsets[1:] - rows.offsets[:-1]).float()
        stats["sft"] = {**rows.stats, "tokens": int(rows.input_ids.numel()),
                        "loss_tokens": int(rows.loss_mask.sum()), "mean_len": float(lengths.mean()),
                        "max_len": int(lengths.max())}

    stats["seconds"] = {"read": t_read - t0, "tokenizer": t_tok - t_read, "total": time.perf_counter() - t0}
    manifest = {
        "version": PREP_VERSION,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": to_container(cfg),
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "mask_id": tokenizer.mask_id,
                      "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "trained": cfg.tokenizer.path is None},
        "stats": stats,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))  # inside the tmp dir: atomic via rename


def load_prepared(root: str | os.PathLike, *, cache_hit: bool = True) -> PreparedData:
    """Open a prepared-data directory written by `prepare_data`."""
    root = Path(root)
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise DataError(f"{root}: not a prepared-data directory (no {MANIFEST})")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("version") != PREP_VERSION:
        raise DataError(f"{root}: prepared with format version {manifest.get('version')}, expected {PREP_VERSION}")
    tokenizer = load_tokenizer(root / TOKENIZER_DIR)
    cpt = sft = None
    if (root / CPT_FILE).is_file():
        t = load_file(str(root / CPT_FILE))
        cpt = CPTDataset(PackedCPT(t["input_ids"], t["doc_ids"], t["loss_mask"]))
    if (root / SFT_FILE).is_file():
        t = load_file(str(root / SFT_FILE))
        sft = SFTDataset(SFTRows(t["input_ids"], t["prompt_mask"], t["loss_mask"], t["doc_ids"], t["offsets"],
                                 stats=manifest["stats"].get("sft", {})))
    return PreparedData(root, tokenizer, cpt, sft, manifest, cache_hit)

