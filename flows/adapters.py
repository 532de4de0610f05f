"""One adapter per stage: `adapter(cfg, out_dir, inputs) -> {"metrics": {...}, "<output>_dir": path}`.

Each calls exactly one entry function of its component and turns the result into the shape the stage
flows log. Optional keys: `"step"` (the training step the final metrics belong to),
`"logged_metrics"` (metrics the component already logged to the stage run itself) and
`"artifacts_logged"` (the component logged its result files itself). Inputs are local
paths already resolved from their URIs (`data`, `checkpoint`). Training stages also get
a Lightning MLflow logger on the active stage run, so their curves land in it.

Component entry functions used:
    data_prep  components.data.prepare_data(cfg) -> PreparedData(root, manifest, cache_hit, ...)
    cpt / sft  components.training.run_training(cfg, out_dir, loggers=[...]) -> {"checkpoint_dir", metrics...}
               (the adapter sets cfg.data.prepared and cfg.model.init_from from the inputs)
    rl         components.rl.run_rl(cfg, model_dir, out_dir, logger=...) -> {"checkpoint_dir", "metrics"}
    quantize   components.quantize.run_quantize(cfg, model_dir, out_dir) -> summary dict
    benchmark  components.bench.run_benchmark(cfg, model_dir, out_dir, run=, client=) -> {"records", ...}
    evaluate   components.evaluate.run_eval(lm, tokenizer, cfg, out_dir) -> EvalRun(results, arms, metrics)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any


def _numeric(prefix: str, tree: Any) -> dict[str, float]:
    """Numeric leaves of a nested dict as `prefix/a/b` metrics."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_numeric(f"{prefix}/{key}", value))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        out[prefix] = float(tree)
    return out


def _flat_metrics(result: dict, prefix: str) -> dict[str, float]:
    """Finite numeric top-level entries; names without a `/` get `prefix/`."""
    out = {}
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key if "/" in key else f"{prefix}/{key}"] = float(value)
    return out


def _quiet_lightning() -> None:
    """Lightning sets its logger to INFO on import (devices, tips) for every stage; the pipeline prints
    its own progress. DRAFTEDIT_DEBUG=1 keeps Lightning's messages."""
    import logging
    import os

    if not os.environ.get("DRAFTEDIT_DEBUG"):
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def _active_run() -> tuple[str, str] | None:
    """(tracking URI, run id) of the active MLflow run (the stage's), or None outside one."""
    import mlflow

    run = mlflow.active_run()
    return None if run is None else (mlflow.get_tracking_uri(), run.info.run_id)


def _mlflow_logger():
    """A Lightning logger writing into the active MLflow run (the stage's; see
    components.tracking.runs.stage_mlflow_logger), or None outside one."""
    from components.tracking.runs import continuing_mlflow_logger

    run = _active_run()
    return None if run is None else continuing_mlflow_logger(*run)


def prepare(cfg, out_dir: Path, inputs: dict[str, Path]) -> dict:
    """Data preparation (cached by the data component under cfg.cache_dir, keyed by its config).

    With a `checkpoint` input (the pipeline's init_checkpoint) and no tokenizer path configured, the
    data are tokenized with that checkpoint's tokenizer, so they fit the model that trains on them.
    """
    from components.data import prepare_data

    if inputs.get("checkpoint") is not None and cfg.tokenizer.path is None:
        cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=str(inputs["checkpoint"])))
    prepared = prepare_data(cfg)
    return {
        "data_dir": str(prepared.root),
        "metrics": _numeric("data", prepared.manifest.get("stats", {})),
        "cache_hit": prepared.cache_hit,
    }


def train(cfg, out_dir: Path, inputs: dict[str, Path]) -> dict:
    """CPT or SFT (cfg.stage) on the prepared data, from the input checkpoint when there is one."""
    from components.training import run_training
    from components.training.launch import launch_training, needs_launcher

    cfg = dataclasses.replace(cfg)
    cfg.data = dataclasses.replace(cfg.data, prepared=str(inputs["data"]))
    if inputs.get("checkpoint") is not None:
        cfg.model = dataclasses.replace(cfg.model, init_from=str(inputs["checkpoint"]))
    _quiet_lightning()
    if needs_launcher(cfg):  # several processes: started by torchrun, not by re-running this flow
        result = launch_training(cfg, out_dir, mlflow_run=_active_run())
    else:
        logger = _mlflow_logger()
        result = run_training(cfg, out_dir, loggers=[logger] if logger is not None else None)
    return {
        "checkpoint_dir": result["checkpoint_dir"],
        "metrics": _flat_metrics(result, "train"),
        "step": int(result.get("steps", 0)),
    }


def reinforce(cfg, out_dir: Path, inputs: dict[str, Path]) -> dict:
    from components.rl.run import run_rl

    _quiet_lightning()
    result = run_rl(cfg, inputs["checkpoint"], out_dir, logger=_mlflow_logger())
    return {"checkpoint_dir": result["checkpoint_dir"], "metrics": result["metrics"],
            "step": int(result["metrics"].get("rl/steps", 0))}


def quantize(cfg, out_dir: Path, inputs: dict[str, Path]) -> dict:
    from components.quantize import run_quantize

    target = out_dir / "checkpoint"
    summary = run_quantize(cfg, inputs["checkpoint"], target)
    return {"checkpoint_dir": str(target), "metrics": _flat_metrics(summary, "quantize")}


def benchmark(cfg, out_dir: Path, inputs: dict[str, Path]) -> dict:
    """The benchmark logs its own metrics (bench/<setting>/*, bench/<preset>/*) and tables into the stage run;
    quantized settings are quantized on the fly from the same weights (cfg.settings[].quant)."""
    import mlflow

    from components.bench import run_benchmark

    run = mlflow.active_run()
    client = mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri()) if run else None
    result = run_benchmark(cfg, inputs["checkpoint"], out_dir, run=run.info.run_id if run else None, client=client)
    logged = {}
    if run is not None:
        logged = {k: v for k, v in client.get_run(run.info.run_id).data.metrics.items() if k.startswith("bench/")}
    return {"metrics": {}, "logged_metrics": logged, "artifacts_logged": run is not None,
            "records": result["records"]}


def evaluate(cfg, out_dir: Path, inputs: dict[str, Path]) -> dict:
    """The suite of an EvalConfig on the checkpoint, every arm and its aggregates, as `draftedit eval`
    runs it (components.evaluate.suite)."""
    import torch

    from components.evaluate.suite import run_eval
    from components.quantize import load_checkpoint

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm, tokenizer = load_checkpoint(inputs["checkpoint"], device)
    return {"metrics": run_eval(lm, tokenizer, cfg, out_dir).metrics}
