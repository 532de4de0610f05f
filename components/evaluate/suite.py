"""The whole evaluation of one checkpoint, as `draftedit eval` and the pipeline's evaluate stage run it.

A suite config (`EvalConfig`) names the tasks and the arms: the headline decode (each task's own
preset, or `preset`), the suite again in each of `presets`, each of those with T2T editing off
(`editing_ablation`), and lm-evaluation-harness tasks (`lm_eval`). `run_eval` runs them all and
returns the per-task results with one flat dict of metrics, so both entries log the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.edits import EditStats, StructuralStats
from components.evaluate.config import EvalConfig
from components.evaluate.results import TaskResult, edit_stats, structural_stats
from components.evaluate.runner import evaluate_suite
from components.presets import EDITING_OFF

# tau_edit above 1: no token is ever edited (the ablation arm of each preset)
EDITING_OFF_OVERRIDE = f"decode.overrides.editing_threshold={EDITING_OFF}"


@dataclass
class EvalRun:
    results: list[TaskResult]  # the headline arm, one per task
    arms: dict[str, list[TaskResult]]  # "<preset>" and "<preset>_noedit" arms
    metrics: dict[str, float]  # eval/<task>/*, eval/*, eval/<arm>/*, eval/<lm-eval task>/*


def suite_metrics(results: list[TaskResult], prefix: str) -> dict[str, float]:
    """`<prefix>/score` (mean task score), `/tpf`, `/tps` (pooled over tasks) and the suite's edit metrics."""
    tokens = sum(r.tokens for r in results)
    forwards = sum(r.forwards for r in results)
    seconds = sum(r.generation_seconds for r in results)
    edits = sum((edit_stats(r.edits) for r in results if r.edits is not None), EditStats())
    judged = [r for r in results if r.structural is not None]  # tasks decoded with Levenshtein editing
    structural = sum((structural_stats(r.structural) for r in judged), StructuralStats())
    return {f"{prefix}/score": sum(r.score for r in results) / len(results),
            f"{prefix}/tpf": tokens / forwards if forwards else 0.0,
            f"{prefix}/tps": tokens / seconds if seconds > 0 else 0.0,
            **edits.metrics(prefix), **(structural.metrics(prefix) if judged else {})}


def run_eval(lm, tokenizer, cfg: EvalConfig, out_dir: str | Path) -> EvalRun:
    """Every arm of the suite on one loaded model; files under `out_dir` (`<arm>/` for the extra arms,
    `lm_eval/` for the harness). lm-eval tasks are checked before anything decodes."""
    out_dir = Path(out_dir)
    harness = None
    if cfg.lm_eval.tasks:
        from components.evaluate.lm_eval_model import prepare_harness

        harness = prepare_harness(lm, tokenizer, cfg.lm_eval, cfg.tasks)

    def suite(preset, extra: list[str], folder: Path) -> list[TaskResult]:
        return evaluate_suite(lm, tokenizer, list(cfg.tasks), preset=preset, limit=cfg.limit, batch_size=cfg.batch_size,
                              task_overrides=list(cfg.task_overrides) + extra, output_dir=folder)

    results = suite(cfg.preset, [], out_dir)
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update(result.metrics())
    metrics.update(suite_metrics(results, "eval"))
    arms: dict[str, list[TaskResult]] = {}
    for preset in cfg.presets:
        arms[preset] = suite(preset, [], out_dir / preset)
        if cfg.editing_ablation:
            arms[f"{preset}_noedit"] = suite(preset, [EDITING_OFF_OVERRIDE], out_dir / f"{preset}_noedit")
    for arm, arm_results in arms.items():
        metrics.update(suite_metrics(arm_results, f"eval/{arm}"))
    if harness is not None:
        from components.evaluate.lm_eval_model import run_harness

        metrics.update(run_harness(*harness, cfg.lm_eval, out_dir / "lm_eval"))
    return EvalRun(results=results, arms=arms, metrics=metrics)
