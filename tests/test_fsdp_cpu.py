"""FSDP (torch's fully_shard) on 2 gloo CPU processes on the MoE stand-in, activation checkpointing on.

One sharded step on a global batch equals one unsharded step on the same batch, and the consolidated
weights reload from the released layout with the unsharded model's logits (fp32 tolerance). Lightning's
Trainer runs FSDP on CUDA only and torch's FullyShardedDataParallel needs an accelerator, so the test
drives fully_shard directly (tests/fsdp_support.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from flows.cli import main
from model import DiffusionLM
from train_support import REPO

SHAPE = ["--shape", "cpu", "--layers", "3", "--dense-layers", "1", "--experts", "4", "--groups", "2", "--topk-groups", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_step_on_two_cpu_processes_equals_one_process_step(tmp_path):
    standin = tmp_path / "standin"
    assert main(["checkpoint", "init", "--like", "llada2.1-mini", *SHAPE, "--out", str(standin)]) == 0
    out = tmp_path / "consolidated"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(REPO / "tests" / "fsdp_support.py"),
                           str(standin), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(out / "compare.pt", weights_only=True)
    before = DiffusionLM.from_pretrained(standin, dtype=torch.float32).state_dict()
    assert got["sharded"].keys() == got["reference"].keys()
    moved = 0
    for key, ref in got["reference"].items():
        torch.testing.assert_close(got["sharded"][key], ref, rtol=1e-4, atol=1e-5, msg=key)
        moved += not torch.equal(ref, before[key])
    assert moved > len(before) // 2  # the step changed most tensors, sharded and unsharded alike
    written = {k for f in out.glob("*.safetensors") for k in safe_open(str(f), "pt").keys()}
    released = {k for f in standin.glob("*.safetensors") for k in safe_open(str(f), "pt").keys()}
    assert written == released  # the released key names
    reloaded = DiffusionLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = reloaded(got["tokens"]).logits
    torch.testing.assert_close(logits, got["logits"], rtol=1e-4, atol=1e-4)
