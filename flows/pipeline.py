"""The `pipeline` flow: data_prep -> cpt -> sft -> rl -> quantize -> benchmark -> evaluate.

One MLflow parent run per execution, one nested run per stage (see flows.runner). Stages hand each
other MLflow URIs (`runs:/<id>/checkpoint`), so every output stays addressable after the run. A
failed stage marks the parent run FAILED and leaves the finished stages' runs intact;
`draftedit pipeline --resume <parent_run_id>` re-opens that parent run with its stored config, reuses
the finished stages' outputs and continues from the first stage that did not finish. A pipeline that
was killed outright (SIGKILL, a lost machine) resumes the same way: the next command that opens the
store marks its runs FAILED (components.tracking.liveness), and the interrupted stage continues inside
its own run from its last checkpoint (flows.runner.run_stage reopens it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow

from components.config import ConfigError, load_config
from components.tracking import (
    TAG_FAILURE,
    TAG_INTERRUPTED,
    TAG_PIPELINE,
    TAG_STAGE,
    Heartbeat,
    TrackingError,
    child_runs,
    git_commit,
    log_config,
    log_metrics,
    owner_tags,
    reopen_run,
    resolve_tracking_uri,
    resolve_uri,
    run_outputs,
)

from .config import (
    DEFAULT_PRESET,
    MODEL_STAGES,
    STAGE_ORDER,
    PipelineConfig,
    load_pipeline_config,
    preset_path,
    stage_config_path,
)
from .preflight import check_pipeline
from .prefect_server import start_ephemeral_server
from .compare import decoding_arms
from .runner import tracking_client
from .stage_flows import STAGE_FLOWS

TAG_FAILED_STAGE = "draftedit.failed_stage"
SUMMARY_COLUMNS = ("stage", "status", "run", "score", "TPF", "TPS", "S score", "S TPF", "S edits", "val acc", "seconds")
FINAL_COLUMNS = ("decoding", "score", "TPF", "TPS", "edits/sample", "edit precision")


def _probe_overrides(cfg: PipelineConfig) -> list[str]:
    return list(cfg.stages.evaluate.overrides) + list(cfg.probe.overrides)


def _stored_config(client, run_id: str, tracking_uri: str, overrides: list[str]) -> PipelineConfig:
    """The pipeline config logged by parent run `run_id` (plus new overrides)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = resolve_uri(f"runs:/{run_id}/config.yaml", tracking_uri, what=f"config of pipeline run {run_id}", dst=tmp)
        return load_config(PipelineConfig, path, overrides)


def _pipeline_run(client, run_id: str):
    """The run `run_id`, which must exist and be a pipeline run (to be resumed)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"cannot resume: run {run_id!r} does not exist in {client.tracking_uri}") from exc
    if run.data.tags.get(TAG_STAGE) != "pipeline":
        raise TrackingError(f"cannot resume: run {run_id} is not a pipeline run (it is a "
                            f"{run.data.tags.get(TAG_STAGE, 'untagged')!r} run)")
    return run


def _open_parent(client, experiment_id: str, cfg: PipelineConfig, resume_run_id: str | None):
    """Create the parent run, or re-open `resume_run_id`."""
    if resume_run_id:
        parent = _pipeline_run(client, resume_run_id)
        reopen_run(client, resume_run_id)  # RUNNING again, owned by this process
        client.set_tag(resume_run_id, "draftedit.resumed", str(int(time.time())))
        return parent
    tags = {TAG_STAGE: "pipeline", TAG_PIPELINE: cfg.name, "mlflow.source.git.commit": git_commit(), **owner_tags()}
    from .runner import _prefect_flow_run_id

    flow_run_id = _prefect_flow_run_id()
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    parent = client.create_run(experiment_id, run_name=f"pipeline-{cfg.name}", tags=tags)
    log_config(client, parent.info.run_id, cfg)
    return parent


def _finished_children(client, parent_run_id: str) -> dict[str, Any]:
    """stage -> the latest FINISHED child run of that stage."""
    done: dict[str, Any] = {}
    for run in child_runs(client, parent_run_id):
        stage = run.data.tags.get(TAG_STAGE)
        if stage in STAGE_ORDER and run.info.status == "FINISHED":
            done[stage] = run  # oldest first, so the latest wins
    return done


def _stage_inputs(stage: str, state: dict[str, str | None]) -> dict[str, str]:
    wanted = {
        "data_prep": ("checkpoint",),  # the initial checkpoint's tokenizer, when there is one
        "cpt": ("data", "checkpoint"),
        "sft": ("data", "checkpoint"),
        "rl": ("checkpoint", "data"),
        "quantize": ("checkpoint",),
        "benchmark": ("checkpoint",),
        "evaluate": ("checkpoint",),
    }[stage]
    return {name: state[name] for name in wanted if state.get(name)}


def _advance(stage: str, outputs: dict[str, str], state: dict[str, str | None]) -> None:
    if stage == "data_prep":
        state["data"] = outputs["data"]
    elif stage in MODEL_STAGES:
        state["checkpoint"] = outputs["checkpoint"]
    elif stage == "quantize":
        state["quantized"] = outputs["checkpoint"]  # the deployable quantized model (probed, not chained)


def _progress(message: str) -> None:
    """One line per stage on stdout, so a terminal shows where the pipeline is."""
    print(f"[draftedit] {message}", flush=True)


@flow(name="pipeline")
def pipeline_flow(
    config: str = DEFAULT_PRESET,
    overrides: list[str] | None = None,
    resume_run_id: str | None = None,
    from_stage: str | None = None,
) -> dict:
    """Run every enabled stage in order; return the parent run id and one summary row per stage."""
    overrides = list(overrides or [])
    cfg = load_pipeline_config(config, overrides)
    output_dir = str(Path(cfg.output_dir).resolve())
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
    client, experiment_id = tracking_client(tracking_uri, cfg.tracking.experiment, output_dir)
    if resume_run_id:
        # The resumed run's own config, so the stages it already finished stay consistent.
        _pipeline_run(client, resume_run_id)
        cfg = _stored_config(client, resume_run_id, tracking_uri, overrides)
        output_dir = str(Path(cfg.output_dir).resolve())
    if from_stage is not None and from_stage not in STAGE_ORDER:
        raise ConfigError(f"--from-stage {from_stage!r}: stages are {', '.join(STAGE_ORDER)}")
    if from_stage is not None and not resume_run_id:
        raise ConfigError("--from-stage needs --resume <pipeline run id> (the run whose earlier outputs to reuse)")
    check_pipeline(cfg, tracking_uri)  # every config, task, preset, input and cross-stage value, before any work
    state: dict[str, str | None] = {"data": None, "checkpoint": None, "quantized": None}
    if cfg.init_checkpoint:
        resolve_uri(cfg.init_checkpoint, tracking_uri, what="init_checkpoint")
        state["checkpoint"] = cfg.init_checkpoint
    if cfg.init_data:
        resolve_uri(cfg.init_data, tracking_uri, what="init_data")
        state["data"] = cfg.init_data

    parent = _open_parent(client, experiment_id, cfg, resume_run_id)
    parent_id = parent.info.run_id
    _progress(f"pipeline run {parent_id} (if interrupted, continue it with: draftedit pipeline --resume {parent_id})")
    reusable = _finished_children(client, parent_id) if resume_run_id else {}
    stop_reuse_at = STAGE_ORDER.index(from_stage) if from_stage else len(STAGE_ORDER)
    probe_config = (
        str(stage_config_path(cfg.stages.evaluate))
        if cfg.probe.enabled and cfg.stages.evaluate.config else None
    )
    rows: list[dict] = []
    rerun = False
    current = None
    beat = Heartbeat(client, parent_id).start()  # a killed pipeline's parent run is found and marked FAILED
    try:
        for index, stage in enumerate(STAGE_ORDER):
            current = stage
            sc = cfg.stage(stage)
            if not sc.enabled:
                rows.append({"stage": stage, "status": "skipped", "run_id": None, "metrics": {}, "seconds": 0.0})
                continue
            if not rerun and index < stop_reuse_at and stage in reusable:
                prior = reusable[stage]
                _advance(stage, run_outputs(prior), state)
                rows.append({"stage": stage, "status": "reused", "run_id": prior.info.run_id,
                             "metrics": dict(prior.data.metrics), "seconds": 0.0})
                continue
            rerun = True
            enabled = [s for s in STAGE_ORDER if cfg.stage(s).enabled]
            _progress(f"stage {enabled.index(stage) + 1}/{len(enabled)}: {stage} ({cfg.stage(stage).config})")
            registry = None
            if stage == "evaluate":
                registry = {
                    "name": cfg.tracking.registered_model,
                    "metric": cfg.tracking.champion_metric,
                    "greater_is_better": cfg.tracking.greater_is_better,
                    "preset": cfg.serve_preset,
                    "copy": cfg.tracking.log_checkpoints,
                }
            params = dict(
                config_path=str(stage_config_path(sc)),
                overrides=list(sc.overrides),
                inputs=_stage_inputs(stage, state),
                output_dir=cfg.output_dir if sc.pool else output_dir,  # a worker writes under its own folder
                tracking_uri=tracking_uri,
                experiment=cfg.tracking.experiment,
                parent_run_id=parent_id,
                pipeline=cfg.name,
                retries=cfg.retries,
                retry_delay_seconds=cfg.retry_delay_seconds,
                probe_config=probe_config if stage in cfg.probe.stages else None,
                probe_overrides=_probe_overrides(cfg),
                registry=registry,
                log_checkpoints=cfg.tracking.log_checkpoints,
            )
            if sc.pool:  # its deployment on that work pool, a subflow run that a worker there picks up
                from .deploy import run_stage_on_pool

                result = run_stage_on_pool(stage, sc.pool, params, client, experiment_id)
            else:
                result = STAGE_FLOWS[stage](**params)
            _advance(stage, result["outputs"], state)
            rows.append({"stage": stage, "status": "cached" if result["cached"] else "ran",
                         "run_id": result["run_id"], "metrics": result["metrics"],
                         "seconds": result["seconds"], "registration": result.get("registration")})
    except BaseException as exc:
        beat.stop()
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        client.set_tag(parent_id, TAG_FAILED_STAGE, current or "")
        client.set_tag(parent_id, TAG_FAILURE, f"stage {current}: {type(exc).__name__}: {exc}".splitlines()[0][:4000])
        client.set_tag(parent_id, TAG_INTERRUPTED, "true" if interrupted else "false")
        client.set_terminated(parent_id, status="KILLED" if interrupted else "FAILED")
        raise
    beat.stop()
    final = next((r for r in reversed(rows) if r["stage"] == "evaluate" and r["run_id"]), None)
    if final:
        log_metrics(client, parent_id, {k: v for k, v in final["metrics"].items() if k.startswith("eval/")})
    plot_path = _log_stage_plot(client, parent_id, rows, output_dir)
    client.set_tag(parent_id, TAG_FAILED_STAGE, "")
    client.set_terminated(parent_id, status="FINISHED")
    registration = next((r.get("registration") for r in rows if r.get("registration")), None)
    return {
        "parent_run_id": parent_id,
        "experiment": cfg.tracking.experiment,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "output_dir": output_dir,
        "rows": rows,
        "registration": registration,
        "checkpoint": state["checkpoint"],
        "plot": plot_path,
    }


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _log_stage_plot(client, parent_id: str, rows: list[dict], output_dir: str) -> str | None:
    """The parent run's `stages.png`: score and TPF per stage and decoding mode (None when nothing was probed)."""
    from .compare import plot_stages

    path = Path(output_dir) / "pipelines" / parent_id / "stages.png"
    if plot_stages(rows, path) is None:
        return None
    client.log_artifact(parent_id, str(path))
    return str(path)


def summary_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    """Table rows (see SUMMARY_COLUMNS); the benchmark adds one row per decoding setting.

    score / TPF / TPS are the stage's evaluation in its tasks' own preset (Q mode); the S columns are
    the same suite in S mode (`eval/speedy/*`), with the T2T edits per sample. `val acc` is a training
    stage's masked-token accuracy on its own held-out data (`val/acc_masked`): what CPT, which cannot
    answer the chat tasks yet, adds.
    """
    out = []
    for row in rows:
        m = row["metrics"]
        run = (row["run_id"] or "-")[:8]
        out.append((row["stage"], row["status"], run, _fmt(m.get("eval/score")), _fmt(m.get("eval/tpf"), ".2f"),
                    _fmt(m.get("eval/tps"), ".1f"), _fmt(m.get("eval/speedy/score")),
                    _fmt(m.get("eval/speedy/tpf"), ".2f"), _fmt(m.get("eval/speedy/edits_per_sample"), ".2f"),
                    _fmt(m.get("val/acc_masked")), _fmt(row["seconds"], ".1f")))
        if row["stage"] == "benchmark":
            names = sorted({k.split("/")[1] for k in m if k.startswith("bench/") and k.count("/") == 2})
            # `bench/<mode>/*` repeats the first unquantized setting of that mode (`<mode>_b1`): skip it.
            aliases = {n for n in names if any(other.startswith(n + "_b") for other in names)}
            for name in (n for n in names if n not in aliases):
                out.append((f"  {name}", "", "", _fmt(m.get(f"bench/{name}/score")),
                            _fmt(m.get(f"bench/{name}/tpf"), ".2f"), _fmt(m.get(f"bench/{name}/tps"), ".1f"),
                            "", "", "", "", ""))
    return out


def final_model_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    """The evaluate stage's suite per decoding mode, editing on and off (score, TPF, TPS, edits, precision)."""
    final = next((r for r in reversed(rows) if r["stage"] == "evaluate" and r["run_id"]), None)
    if final is None:
        return []
    m = final["metrics"]
    out = []
    for key, label in decoding_arms(m):
        out.append((label, _fmt(m.get(f"eval/{key}/score")), _fmt(m.get(f"eval/{key}/tpf"), ".2f"),
                    _fmt(m.get(f"eval/{key}/tps"), ".1f"), _fmt(m.get(f"eval/{key}/edits_per_sample"), ".2f"),
                    _fmt(m.get(f"eval/{key}/edit_precision"), ".2f")))
    return out


def rl_line(rows: list[dict]) -> str | None:
    """What RL did to its held-out accuracy (its own curve, in its rollout mode)."""
    rl = next((r for r in rows if r["stage"] == "rl" and r["run_id"]), None)
    if rl is None or "rl_eval/initial_accuracy" not in rl["metrics"]:
        return None
    m = rl["metrics"]
    first, last = 100 * m["rl_eval/initial_accuracy"], 100 * m["rl_eval/accuracy"]
    return (f"RL: held-out accuracy {first:.1f}% -> {last:.1f}% ({last - first:+.1f} points) in "
            f"{int(m.get('rl/steps', 0))} steps")


def print_summary(result: dict, wall_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)  # a log file gets the whole table
    table = Table(title=f"draftedit pipeline — parent run {result['parent_run_id']}")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, justify="left" if col in ("stage", "status", "run") else "right", no_wrap=True)
    for row in summary_rows(result["rows"]):
        table.add_row(*row)
    console.print(table)
    final = final_model_rows(result["rows"])
    if final:
        ftable = Table(title="final model (evaluate stage): decoding modes, T2T editing on and off")
        for col in FINAL_COLUMNS:
            ftable.add_column(col, justify="left" if col == "decoding" else "right", no_wrap=True)
        for row in final:
            ftable.add_row(*row)
        console.print(ftable)
    line = rl_line(result["rows"])
    if line:
        console.print(line)
    reg = result.get("registration")
    if reg:
        champ = "now champion" if reg["champion"] else f"champion stays version {reg['previous_champion']}"
        console.print(f"Registered model [bold]{reg['name']}[/] version {reg['version']} "
                      f"(score {reg['score']:.4g}; models:/{reg['name']}/latest; {champ})")
    if result.get("plot"):
        console.print(f"Plot (score and TPF per stage and mode): {result['plot']}")
    console.print(f"Wall time: {wall_seconds:.0f} s")
    console.print(f"Tracking: {result['tracking_uri']}  (experiment '{result['experiment']}')")
    console.print(f"Outputs:  {result['output_dir']}")
    console.print("Look at it: [bold]draftedit ui[/] (MLflow UI http://127.0.0.1:5000, Prefect UI http://127.0.0.1:4200)")
    console.print(f"Compare its stages: [bold]draftedit compare --parent {result['parent_run_id']}[/]")


# ---------------------------------------------------------------- `draftedit pipeline`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value (e.g. stages.rl.enabled=false)")
    parser.add_argument("--preset", "-p", default=DEFAULT_PRESET,
                        help="pipeline preset name in conf/pipeline/ (tiny, small, llada2.1-mini) or a YAML path")
    parser.add_argument("--resume", metavar="RUN_ID",
                        help="continue the pipeline run RUN_ID from its first unfinished stage")
    parser.add_argument("--from-stage", choices=STAGE_ORDER,
                        help="with --resume: re-run from this stage on (earlier stages' outputs are reused)")
    parser.add_argument("--dry-run", action="store_true", help="validate every config and print the plan, run nothing")


def run(args: argparse.Namespace) -> int:
    from components.cli_errors import config_errors

    path = preset_path(args.preset)
    with config_errors(path, args.overrides):
        cfg = load_pipeline_config(path, args.overrides)
    if args.dry_run:
        output_dir = Path(cfg.output_dir).resolve()
        tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
        check_pipeline(cfg, tracking_uri)
        print(f"pipeline {cfg.name}: every check passed; tracking {tracking_uri}, outputs {output_dir}")
        for stage in STAGE_ORDER:
            sc = cfg.stage(stage)
            state = f"{sc.config} {' '.join(sc.overrides)}".strip() if sc.enabled else "disabled"
            state += f"  (on work pool {sc.pool})" if sc.enabled and sc.pool else ""
            print(f"  {stage:10s} {state}")
        return 0
    start = time.perf_counter()
    start_ephemeral_server()  # Prefect's server, bound to this process: a SIGKILL cannot orphan it
    result = pipeline_flow(config=args.preset, overrides=args.overrides, resume_run_id=args.resume,
                           from_stage=args.from_stage)
    print_summary(result, time.perf_counter() - start)
    return 0
