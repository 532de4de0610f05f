"""FSDP (torch's fully_shard) on 2 gloo CPU processes on the MoE stand-in, activation checkpointing on.

One sharded step on a global batch equals one unsharded step on the same batch, and the consolidated
weights reload from the released layout with the unsharded model's logits (fp32 tolerance): the step
itself, driven directly (tests/fsdp_support.py). Then SFT through the training entry, as the pipeline
runs it: `trainer.strategy=fsdp` on 2 CPU processes started by torchrun, bf16-mixed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from components.data import load_data_config, prepare_data
from components.training import load_train_config
from components.training.launch import launch_training, needs_launcher
from flows.cli import main
from model import DiffusionLM
from train_support import REPO, read_weights

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


def test_sft_under_fsdp_on_two_cpu_processes_through_the_training_entry(tmp_path, monkeypatch):
    """Full fine-tuning, bf16-mixed, gradient checkpointing on: the export holds the released key
    names, every weight moved by training, and it reloads through our loader."""
    standin = tmp_path / "standin"
    assert main(["checkpoint", "init", "--like", "llada2.1-mini", *SHAPE, "--out", str(standin)]) == 0
    prepared = prepare_data(load_data_config(overrides=[
        f"cache_dir={tmp_path / 'data'}", f"tokenizer.path={standin}", "block_length=8", "max_seq_len=64",
        "cpt.enabled=false", "sft.synthetic.num_examples=40", "sft.synthetic.families=[permutation,sum]",
        "sft.synthetic.params={}", "sft.external=[]"]))
    cfg = load_train_config(None, [
        "stage=sft", f"data.prepared={prepared.root}", f"model.init_from={standin}", "model.gradient_checkpointing='on'",
        "trainer.max_steps=2", "trainer.batch_size=2", "trainer.block_length=8", "trainer.log_every_steps=1",
        "trainer.checkpoint_every_steps=2", "trainer.val_every_steps=1000", "trainer.num_threads=1",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=fsdp", "trainer.precision=bf16-mixed",
        "optim.warmup_steps=1", "optim.lr=0.01", "data.val_fraction=0.0", "averaging.top_k=1"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert needs_launcher(cfg)
    result = launch_training(cfg, tmp_path / "run")
    assert result["world_size"] == 2 and result["steps"] == 2 and "replicas_in_sync" not in result
    assert result["trainable_parameters"] == result["num_parameters"]  # full fine-tuning
    base = {k: v for f in standin.glob("*.safetensors") for k, v in _tensors(f).items()}
    trained = read_weights(result["checkpoint_dir"])
    assert trained.keys() == base.keys()  # consolidated into the released layout
    assert {t.dtype for t in trained.values()} == {torch.bfloat16}  # trained on float32 masters, exported as released
    moved = [k for k in base if not torch.equal(base[k].float(), trained[k].float())]
    assert len(moved) > len(base) // 2
    lm = DiffusionLM.from_pretrained(result["checkpoint_dir"], dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.isfinite(lm(torch.randint(3, 200, (1, 16))).logits).all()


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
