"""Shared helpers of the training tests (tiny prepared data, tiny model overrides). Holds no tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# A 2-layer width-32 model: every training test runs in seconds on one core.
TINY_MODEL = [
    "model.overrides.hidden_size=32", "model.overrides.intermediate_size=64", "model.overrides.num_hidden_layers=2",
    "model.overrides.num_attention_heads=2", "model.overrides.num_key_value_heads=1", "model.overrides.head_dim=16",
    "model.overrides.max_position_embeddings=128",
]


def data_overrides(cache_dir: Path) -> list[str]:
    """Synthetic-only data: small BPE, block 8, CPT rows of 32 tokens, SFT conversations."""
    return [f"cache_dir={cache_dir}", "block_length=8", "max_seq_len=64", "tokenizer.vocab_size=320",
            "cpt.seq_len=32", "cpt.stdlib.enabled=false", "cpt.synthetic.num_examples=60",
            "sft.synthetic.num_examples=60", "cpt.synthetic.families=[permutation,sum,sudoku4,addition]",
            "cpt.synthetic.params={}", "sft.synthetic.families=[permutation,sum,sudoku4,addition]",
            "sft.synthetic.params={}"]


def prepare_tiny_data(cache_dir: Path):
    from components.data import load_data_config, prepare_data

    return prepare_data(load_data_config(overrides=data_overrides(cache_dir)))


def train_overrides(prepared_root: Path, stage: str = "sft", steps: int = 6, **extra) -> list[str]:
    out = [f"stage={stage}", f"data.prepared={prepared_root}", *TINY_MODEL, f"trainer.max_steps={steps}",
           "trainer.batch_size=4", "trainer.block_length=8", "trainer.log_every_steps=1",
           "trainer.checkpoint_every_steps=2", "trainer.val_every_steps=1000", "trainer.num_threads=1",
           "optim.warmup_steps=2", "data.val_fraction=0.0"]
    out += [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]
    return out


def cli_command(config: str, out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "components.training.cli", "--config", config, "--out", str(out), *overrides]


def run_cli(config: str, out: Path, overrides: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cli_command(config, out, overrides), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))
