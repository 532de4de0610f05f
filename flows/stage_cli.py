"""`draftedit run <stage>`: run one tracked stage flow on its own.

E.g. re-running RL from a given SFT run:
    draftedit run rl --input checkpoint=runs:/<sft_run_id>/checkpoint
The stage table is flows/stages.py, the stage body flows/runner.py, the flows flows/stage_flows.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.config import ConfigError
from components.tracking import TrackingError, resolve_tracking_uri, run_outputs

from .prefect_server import start_ephemeral_server
from .runner import StageRequest, tracking_client
from .stage_flows import STAGE_FLOWS
from .stages import COMPONENTS, StageError, load_stage_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=list(COMPONENTS), help="the stage to run")
    parser.add_argument("overrides", nargs="*", help="overrides of the stage config, key.sub=value")
    parser.add_argument("--preset", default="tiny", help="pipeline preset (or YAML) giving the stage config")
    parser.add_argument("--config", help="stage config YAML (default: the preset's config for this stage)")
    parser.add_argument(
        "--input", action="append", default=[], metavar="NAME=URI",
        help="an input as a URI, e.g. checkpoint=runs:/<run_id>/checkpoint or data=/path (repeatable)",
    )
    parser.add_argument(
        "--from-run", metavar="RUN_ID", help="take every input from the outputs of this earlier MLflow run"
    )
    parser.add_argument("--register", action="store_true", help="evaluate: register the evaluated model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the pipeline preset (e.g. tracking.uri=...)")


def run(args: argparse.Namespace) -> int:
    from components.cli_errors import config_errors

    from .config import load_pipeline_config, preset_path, stage_config_path
    from .pipeline import registration_spec

    path = preset_path(args.preset)
    with config_errors(path, args.set):
        pcfg = load_pipeline_config(path, args.set)
    stage_cfg = pcfg.stage(args.stage)
    config_path = args.config or (str(stage_config_path(stage_cfg)) if stage_cfg.config else None)
    if not config_path:
        raise ConfigError(f"no config for stage {args.stage}: give --config or set stages.{args.stage}.config")
    overrides = list(stage_cfg.overrides) + list(args.overrides)
    load_stage_config(args.stage, config_path, overrides)  # a bad config fails here, before the flow starts
    output_dir = str(Path(pcfg.output_dir).resolve())
    tracking_uri = resolve_tracking_uri(pcfg.tracking.uri, output_dir)
    inputs: dict[str, str] = {}
    if args.from_run:
        client, _ = tracking_client(tracking_uri, pcfg.tracking.experiment, output_dir)
        try:
            source = client.get_run(args.from_run)
        except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise TrackingError(f"--from-run {args.from_run}: no such run in {tracking_uri}") from exc
        outputs = run_outputs(source)
        if not outputs:
            raise TrackingError(f"--from-run {args.from_run}: that run recorded no outputs")
        spec = COMPONENTS[args.stage]
        inputs.update({k: v for k, v in outputs.items() if k in spec.inputs + spec.optional})
    for item in args.input:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            raise StageError(f"--input must look like NAME=URI, got {item!r}")
        inputs[name] = uri
    if args.register and args.stage != "evaluate":
        raise StageError("--register applies to the evaluate stage only")
    request = StageRequest(
        config_path=config_path,
        overrides=overrides,
        inputs=inputs,
        output_dir=output_dir,
        tracking_uri=tracking_uri,
        experiment=pcfg.tracking.experiment,
        retries=pcfg.retries,
        retry_delay_seconds=pcfg.retry_delay_seconds,
        register=registration_spec(pcfg) if args.register else None,
        log_checkpoints=pcfg.tracking.log_checkpoints,
    )
    start_ephemeral_server()  # Prefect's server, bound to this process: a SIGKILL cannot orphan it
    result = STAGE_FLOWS[args.stage](request=request)
    print(f"{args.stage}: run {result['run_id']} ({result['seconds']:.1f} s)")
    for name, uri in result["outputs"].items():
        print(f"  output {name}: {uri}")
    for key, value in sorted(result["metrics"].items()):
        print(f"  {key} = {value:.4g}")
    return 0
