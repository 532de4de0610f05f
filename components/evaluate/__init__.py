"""Evaluation stage: tasks as configs, batched decoding, extractors, scorers, torchmetrics metrics.

    from components.evaluate import evaluate_task, evaluate_suite
    result = evaluate_task(lm, tokenizer, "sum", limit=50)        # a name in conf/task/ or a path
    result.score, result.tpf, result.metrics()                     # eval/sum/accuracy, eval/sum/tpf, ...
"""

from components.evaluate.config import EvalConfig, TaskConfig, TaskConfigError, load_eval_config
from components.evaluate.extractors import EXTRACTORS, register_extractor
from components.evaluate.results import TaskResult, read_jsonl, render_table
from components.evaluate.runner import build_decode_config, evaluate_suite, evaluate_task, render_prompt
from components.evaluate.scorers import SCORERS, SandboxUnavailableError, register_scorer
from components.evaluate.sources import Sample, TaskDataError, load_samples
from components.evaluate.suite import EvalRun, run_eval, suite_metrics
from components.evaluate.tasks import list_tasks, load_task

__all__ = [
    "EXTRACTORS",
    "SCORERS",
    "EvalConfig",
    "EvalRun",
    "Sample",
    "SandboxUnavailableError",
    "TaskConfig",
    "TaskConfigError",
    "TaskDataError",
    "TaskResult",
    "build_decode_config",
    "evaluate_suite",
    "evaluate_task",
    "list_tasks",
    "load_eval_config",
    "load_samples",
    "load_task",
    "read_jsonl",
    "register_extractor",
    "register_scorer",
    "render_prompt",
    "render_table",
    "run_eval",
    "suite_metrics",
]
