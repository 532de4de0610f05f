"""`results.jsonl` of the throughput benchmark and the fingerprints that let a run resume.

A setting is matched by a fingerprint of model, prompts and decoding settings, so a record is kept
only while everything it was measured with is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional

import torch

from model.files import atomic_writer

from .config import BenchConfig
from .measure import Plan
from .prompts import PromptSet


def plan_fingerprint(plan: Plan, model_fp: str, prompts: PromptSet, cfg: BenchConfig, device: torch.device) -> str:
    data = {"plan": [plan.name, plan.kind, plan.batch_size, plan.quant, dataclasses.asdict(plan.decode), plan.indices],
            "model": model_fp, "prompts": prompts.fingerprint(), "repeats": cfg.repeats, "device": str(device),
            "dtype": cfg.dtype, "threads": cfg.threads, "fp8": list(cfg.fp8_block_size),
            "skip": list(cfg.quant_skip_modules)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class ResultStore:
    """`results.jsonl`, one completed setting per line, rewritten atomically on every append."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.records: list[dict] = []
        if resume and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a torn last line cannot happen with atomic writes; stop at anything odd

    def find(self, fingerprint: str) -> Optional[dict]:
        return next((r for r in self.records if r.get("fingerprint") == fingerprint), None)

    def keep_only(self, fingerprints: set[str]) -> None:
        """Drop records of settings that are no longer planned (or whose inputs changed)."""
        self.records = [r for r in self.records if r.get("fingerprint") in fingerprints]
        self._write()

    def append(self, record: dict) -> None:
        self.records.append(record)
        self._write()

    def _write(self) -> None:
        with atomic_writer(self.path, fsync=True) as fh:
            for r in self.records:
                fh.write(json.dumps(r) + "\n")
