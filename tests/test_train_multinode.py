"""Training across nodes: two torchrun processes on localhost stand for two single-device nodes (gloo).

Each "node" is launched as a cluster scheduler (torchrun, or SLURM's srun) launches it on its own
host: same command, its own node rank and run folder, the rendezvous at the first node's address.
Lightning reads the world from torchrun's environment and checks it against trainer.num_nodes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train_support import REPO, prepare_tiny_data, train_overrides

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cpt_on_two_nodes_trains_one_model_in_sync(tmp_path):
    from model import DiffusionLM

    prepared = prepare_tiny_data(tmp_path / "data")
    overrides = train_overrides(prepared.root, "cpt", steps=4, trainer__strategy="ddp", trainer__num_nodes=2,
                                trainer__devices=1, trainer__accelerator="cpu", objective__mtf_prob=0.5)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    nodes = []
    for rank in (0, 1):
        out = tmp_path / f"node{rank}"
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "components.training.cli", "--config", "conf/train/cpt.yaml", "--out", str(out), *overrides]
        nodes.append((out, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True)))
    logs = [proc.communicate(timeout=400)[0] for _, proc in nodes]
    assert [proc.returncode for _, proc in nodes] == [0, 0], [log[-3000:] for log in logs]
    result = json.loads((tmp_path / "node0" / "result.json").read_text())  # global rank 0 exports the model
    assert result["world_size"] == 2 and result["steps"] == 4
    assert len(result["replica_checksums"]) == 2 and result["replicas_in_sync"]
    DiffusionLM.from_pretrained(result["checkpoint_dir"])
    assert not (tmp_path / "node1" / "result.json").exists()
