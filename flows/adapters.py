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
    evaluate   components.evaluate.evaluate_suite(lm, tokenizer, tasks, ...) -> list[TaskResult]
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


def _mlflow_logger():
    """A Lightning logger writing into the active MLflow run (the stage's; see
    components.tracking.runs.stage_mlflow_logger), or None outside one."""
    import mlflow

    from components.tracking.liveness import TAG_RESUMED
    from components.tracking.runs import logged_steps, stage_mlflow_logger

    run = mlflow.active_run()
    if run is None:
        return None
    uri, run_id = mlflow.get_tracking_uri(), run.info.run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    # A continued (reopened) run already holds the steps replayed since its last checkpoint.
    skip = logged_steps(client, run_id) if TAG_RESUMED in client.get_run(run_id).data.tags else None
    return stage_mlflow_logger(uri, run_id, skip)


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

    cfg = dataclasses.replace(cfg)
    cfg.data = dataclasses.replace(cfg.data, prepared=str(inputs["data"]))
    if inputs.get("checkpoint") is not None:
        cfg.model = dataclasses.replace(cfg.model, init_from=str(inputs["checkpoint"]))
    _quiet_lightning()
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
    """The benchmark logs its own metrics (bench/<setting>/*, bench/<mode>/*) and tables into the stage run;
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
    """The task suite of an EvalConfig on the checkpoint; per-task metrics plus suite aggregates.

    eval/score is the mean task score; eval/tpf and eval/tps pool tokens over the whole suite. Each
    preset in cfg.presets adds eval/<preset>/* (and eval/<preset>_noedit/* with cfg.editing_ablation): the
    same suite decoded with the speedy or quality preset, with T2T editing on and off, edit counts and edit precision.
    """
    import torch

    from components.presets import EDITING_OFF
    from components.evaluate import evaluate_suite

    device = "cuda" if torch.cuda.is_available() else "cpu"
    from components.quantize import load_checkpoint

    lm, tokenizer = load_checkpoint(inputs["checkpoint"], device)
    harness = None
    if cfg.lm_eval.tasks:  # lm-evaluation-harness tasks (eval/<task>/<metric>), checked before anything decodes
        from components.evaluate.lm_eval_model import prepare_harness

        harness = prepare_harness(lm, tokenizer, cfg.lm_eval, cfg.tasks)

    def suite(mode, extra: list[str], folder: Path):
        return evaluate_suite(lm, tokenizer, list(cfg.tasks), mode=mode, limit=cfg.limit, batch_size=cfg.batch_size,
                              task_overrides=list(cfg.task_overrides) + extra, output_dir=folder)

    results = suite(cfg.preset, [], out_dir)
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update(result.metrics())
    metrics.update(suite_metrics(results, "eval"))
    noedit = [f"decode.overrides.editing_threshold={EDITING_OFF}"]  # tau_edit > 1: no token is ever edited
    for mode in cfg.presets:
        metrics.update(suite_metrics(suite(mode, [], out_dir / mode), f"eval/{mode}"))
        if cfg.editing_ablation:
            metrics.update(suite_metrics(suite(mode, noedit, out_dir / f"{mode}_noedit"), f"eval/{mode}_noedit"))
    if harness is not None:
        from components.evaluate.lm_eval_model import run_harness

        metrics.update(run_harness(*harness, cfg.lm_eval, out_dir / "lm_eval"))
    return {"metrics": metrics}


def suite_metrics(results, prefix: str) -> dict[str, float]:
    """`<prefix>/score` (mean task score), `/tpf`, `/tps` (pooled over tasks) and the suite's edit metrics."""
    from components.evaluate.results import edit_stats
    from components.edits import EditStats

    tokens = sum(r.tokens for r in results)
    forwards = sum(r.forwards for r in results)
    seconds = sum(r.generation_seconds for r in results)
    edits = sum((edit_stats(r.edits) for r in results if r.edits is not None), EditStats())
    return {f"{prefix}/score": sum(r.score for r in results) / len(results),
            f"{prefix}/tpf": tokens / forwards if forwards else 0.0,
            f"{prefix}/tps": tokens / seconds if seconds > 0 else 0.0,
            **edits.metrics(prefix)}
