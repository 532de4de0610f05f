"""`draftedit eval`: evaluate a checkpoint on tasks and print a compact table.

    draftedit eval --model outputs/sft --task sum --task gsm8k --preset speedy --limit 50
    draftedit eval --model DIR --task path/to/my_task.yaml --set decode.overrides.threshold=0.7
    draftedit eval --model DIR --task gsm8k --set source.path=/data/gsm8k/test.jsonl
    draftedit eval --model DIR --task gsm8k --set "prompt.template='Q: {question}'"  # quote braces
    draftedit eval --list-tasks

Without --task, the suite of conf/eval/default.yaml (or --config) runs. `--set` overrides apply
to every task (dotlist keys of the task schema, e.g. `prompt.chat=false`, `source.num_examples=50`).
The suite's other arms run as in the pipeline's evaluate stage (the same function, the same metric
names): each of its `presets`, with `editing_ablation` each again with editing off, and its `lm_eval`
tasks; `--suite-set presets=[]` keeps only the headline arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from components.presets import preset_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--task", action="append", default=None,
                        help="task name in conf/task/ or a task YAML path (repeatable); default: the suite")
    parser.add_argument("--config", default=None, help="suite config YAML (default conf/eval/default.yaml)")
    parser.add_argument("--preset", choices=preset_names(), default=None,
                        help="decoding preset (conf/decode/) for every task (default: each task's own)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most N samples per task")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts decoded together")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task config key for every task (repeatable)")
    parser.add_argument("--suite-set", dest="suite_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a suite config key (repeatable), e.g. presets=[] editing_ablation=false")
    parser.add_argument("--out", default=None, help="output folder (default: the suite's output_dir)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, ...)")
    parser.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and exit")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from components.cli_errors import UsageError, config_errors
    from components.config import ConfigError
    from components.evaluate.config import load_eval_config
    from components.evaluate.tasks import list_tasks, resolve_task_path
    from components.evaluate.results import METRICS_FILE, render_table, write_json
    from components.evaluate.runner import resolve_task
    from components.evaluate.suite import run_eval
    from components.quantize import load_checkpoint

    # Piped output (CI logs, files) gets a wide fixed width so the table is never squeezed.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.list_tasks:
        for name in list_tasks():
            console.print(name)
        return 0
    if not args.model:
        raise UsageError("--model is required")
    for option, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    # Bad configs (ConfigError), data (TaskDataError), sandbox or checkpoint: one line at flows.cli.
    with config_errors(args.config, args.suite_overrides):
        suite = load_eval_config(args.config, args.suite_overrides)
    if not (args.task or suite.tasks):
        raise ConfigError("no tasks: pass --task or list tasks in the suite config")
    suite = dataclasses.replace(
        suite,
        tasks=list(args.task or suite.tasks),
        preset=args.preset or suite.preset,
        limit=args.limit if args.limit is not None else suite.limit,
        batch_size=args.batch_size if args.batch_size is not None else suite.batch_size,
        task_overrides=list(suite.task_overrides) + list(args.overrides),
    )
    with config_errors(args.config, args.overrides):
        for task in suite.tasks:  # validate every task before the model is loaded
            resolve_task(str(resolve_task_path(task)), suite.task_overrides)
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model {args.model}: not a folder")
    lm, tokenizer = load_checkpoint(args.model, args.device)
    out = Path(args.out or suite.output_dir)
    run = run_eval(lm, tokenizer, suite, out)
    console.print(render_table(run.results, title=f"draftedit eval · {args.model}"))
    for arm in run.arms:
        m = run.metrics
        console.print(f"{arm:>16}: score {m[f'eval/{arm}/score']:.3f}  TPF {m[f'eval/{arm}/tpf']:.2f}  "
                      f"TPS {m[f'eval/{arm}/tps']:.1f}")
    write_json(out / METRICS_FILE, run.metrics)
    console.print(f"per-sample records and results: {out}/<task>/ (records.jsonl, result.json), {out}/summary.json; "
                  f"every metric the pipeline logs: {out}/{METRICS_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m components.evaluate.cli`: the same command as `draftedit eval`."""
    from components.cli_errors import component_main

    return component_main("eval", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
