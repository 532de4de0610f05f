"""Training on several processes of one machine, started from a process that cannot be run again.

Lightning starts the extra processes of a multi-device run by re-running the command line with a
rank in the environment. That suits `draftedit train`, not the pipeline: its command is a Prefect
flow, and running it again would start the whole pipeline in every rank. There the stage runs the
training command under torchrun, which starts every process itself (Lightning then sees an external
launcher), and reads rank 0's result file. Under torchrun, SLURM or any launcher that already set
the ranks, nothing is launched: the stage trains in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from components.config import save_config

from .config import TrainConfig
from .run import RESULT_FILE, TrainingInputError, process_count

LAUNCH_CONFIG = "launch_config.yaml"
# Set by torchrun / torchelastic, SLURM and Lightning's own launcher in the processes they start.
LAUNCHED_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID")


def needs_launcher(cfg: TrainConfig) -> bool:
    """A multi-process run on this machine that nobody has started the processes of."""
    return process_count(cfg) > 1 and not any(name in os.environ for name in LAUNCHED_ENV)


def launch_command(config_path: Path, out_dir: Path, processes: int,
                   mlflow_run: tuple[str, str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={processes}", "-m", "components.training.cli",
           "--config", str(config_path), "--out", str(out_dir)]
    if mlflow_run is not None:
        uri, run_id = mlflow_run
        cmd += ["--mlflow-run", run_id, "--tracking-uri", uri]
    return cmd


def launch_training(cfg: TrainConfig, out_dir: str | os.PathLike, *,
                    mlflow_run: tuple[str, str] | None = None) -> dict[str, Any]:
    """run_training's result, from `trainer.devices` processes started by torchrun on this machine.

    The config goes to the processes as a file (exactly what this process would train); the curves
    go to `mlflow_run` (tracking URI, run id) from rank 0, as an in-process run logs them."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / LAUNCH_CONFIG
    save_config(cfg, config_path)
    result_path = out_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)  # a result from an earlier run must not pass for this one's
    processes = process_count(cfg)
    proc = subprocess.run(launch_command(config_path, out_dir, processes, mlflow_run), check=False)
    if proc.returncode != 0:
        raise TrainingInputError(f"training on {processes} processes (torchrun) failed with exit code "
                                 f"{proc.returncode}; each rank's error is printed above")
    if not result_path.is_file():
        raise TrainingInputError(f"training on {processes} processes ended without rank 0's {result_path}")
    return json.loads(result_path.read_text())
