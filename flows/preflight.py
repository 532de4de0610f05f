"""Preflight: resolve and check everything a run will need, before any stage starts.

A mistake must cost seconds, not a training run. `check_pipeline` (called by `pipeline --dry-run` and
at the start of every pipeline) and `check_stage` (at the start of `draftedit run STAGE`) load every
stage config with its schema, then check what the schemas alone cannot see:
- the decoding settings each stage will use: the presets exist in conf/decode/ and every task's,
  setting's and rollout's overrides give valid thresholds and lengths;
- the evaluation tasks: each resolves, loads and validates, and its data file exists, parses and has
  the required columns (first rows);
- inputs: checkpoints, prepared data and tokenizers named by path or URI exist;
- values that must agree across stages: block lengths (data, training, decoding), the tokenizer's
  special ids and vocabulary against the model's, sequence lengths against the model's positions.
Each failure is one `ConfigError` line that names the stage and the key.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import REPO_ROOT, ConfigError, fail
from components.presets import check_preset
from components.tracking import TrackingError, resolve_uri

from .config import MODEL_STAGES, PipelineConfig, stage_config_path, stage_overrides
from .stages import COMPONENTS, load_stage_config

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
DEFAULT_SPECIAL_IDS = {"pad_id": 0, "eos_id": 1, "mask_id": 2}  # our BPE tokenizer's order (model/tokenizer.py)


def check_pipeline(cfg: PipelineConfig, tracking_uri: str | None = None) -> dict[str, Any]:
    """Every check of this module over the whole pipeline; returns each enabled stage's loaded config.

    Each stage loads its config again when it runs (stage flows take paths, so a deployment on a
    work pool can run them); what is returned serves the checks and the callers' messages.
    """
    configs: dict[str, Any] = {}
    for stage in COMPONENTS:
        sc = cfg.stage(stage)
        if sc.enabled:
            configs[stage] = load_stage_config(stage, stage_config_path(sc), stage_overrides(cfg, stage))
            if not sc.pool:  # a stage on a work pool runs on that pool's machine
                check_device(stage, configs[stage], cfg.hardware)
    probe = None
    if cfg.probe.enabled and cfg.stages.evaluate.config:
        overrides = list(cfg.stages.evaluate.overrides) + list(cfg.probe.overrides)
        with _context("probe"):
            probe = load_stage_config("evaluate", stage_config_path(cfg.stages.evaluate), overrides)
    check_preset("serve_preset", cfg.serve_preset)
    receives_checkpoint = bool(cfg.init_checkpoint)
    for stage, stage_cfg in configs.items():
        check_stage_config(stage, stage_cfg, receives_checkpoint=receives_checkpoint)
        receives_checkpoint = receives_checkpoint or stage in MODEL_STAGES
    if probe is not None:
        with _context("probe"):
            check_stage_config("evaluate", probe, receives_checkpoint=True)
    for key in ("init_checkpoint", "init_data"):
        uri = getattr(cfg, key)
        if uri:
            check_input(key, uri, tracking_uri)
    check_agreement(configs, init_checkpoint=_local_folder(cfg.init_checkpoint))
    return configs


def check_device(stage: str, cfg: Any, hardware: str | None) -> None:
    """A stage that asks for a GPU on a machine without one fails here, not minutes into its run."""
    import torch

    if torch.cuda.is_available():
        return
    section = {"cpt": "train", "sft": "train", "rl": "rl", "benchmark": "bench"}.get(stage)
    trainer = getattr(cfg, "trainer", None)
    key, value = (("trainer.accelerator", trainer.accelerator) if hasattr(trainer, "accelerator")
                  else ("device", getattr(cfg, "device", None)))
    if section and value in ("gpu", "cuda"):
        hint = "" if hardware == "cpu" else " (hardware=cpu runs the preset on this machine's CPU)"
        fail(f"stage {stage}: {section}.{key}", f"is {value!r} but this machine has no CUDA device{hint}")
    if section and getattr(trainer, "strategy", None) == "deepspeed" and value not in ("gpu", "cuda"):
        # DeepSpeed runs on CUDA only; fsdp and ddp also run on CPU processes (gloo)
        fail(f"stage {stage}: {section}.trainer.strategy", f"deepspeed needs trainer.accelerator=gpu, got {value!r} "
                                                          "(fsdp and ddp run on CPU processes)")


def check_stage(stage: str, cfg: Any, inputs: dict[str, str], tracking_uri: str | None) -> None:
    """`draftedit run STAGE`: the stage's own checks and its inputs."""
    check_stage_config(stage, cfg, receives_checkpoint=bool(inputs.get("checkpoint")))
    for name, uri in inputs.items():
        if uri:
            check_input(f"--input {name}", uri, tracking_uri)
    checkpoint = _local_folder(inputs.get("checkpoint"))
    check_agreement({stage: cfg}, init_checkpoint=checkpoint)


# ------------------------------------------------------------------------------------------ per stage
def check_stage_config(stage: str, cfg: Any, receives_checkpoint: bool = False) -> None:
    """One stage's checks. `receives_checkpoint`: the stage starts from a checkpoint input (the
    previous model stage's, or init_checkpoint), which replaces a training config's model.init_from."""
    from components.bench.config import BenchConfig
    from components.data.config import DataConfig
    from components.evaluate.config import EvalConfig
    from components.rl.config import RLConfig
    from components.training.config import TrainConfig

    with _context(f"stage {stage}"):  # by schema: a stage table with other components is checked by them
        if isinstance(cfg, TrainConfig):
            _check_train(cfg, receives_checkpoint)
        elif isinstance(cfg, DataConfig):
            _check_data(cfg)
        elif isinstance(cfg, RLConfig):
            _check_rl(cfg)
        elif isinstance(cfg, BenchConfig):
            _check_bench(cfg)
        elif isinstance(cfg, EvalConfig):
            _check_eval(cfg)


def _check_train(cfg, receives_checkpoint: bool) -> None:
    if cfg.model.init_from and not receives_checkpoint:
        check_input("train.model.init_from", cfg.model.init_from, None)
    if cfg.data.prepared:
        check_input("train.data.prepared", cfg.data.prepared, None)


def _check_data(cfg) -> None:
    if cfg.tokenizer.path:
        check_input("data.tokenizer.path", cfg.tokenizer.path, None)
    for stage in ("cpt", "sft"):
        for i, src in enumerate(getattr(cfg, stage).external):
            if src.kind == "file" and not glob.glob(src.path) and not glob.glob(str(REPO_ROOT / src.path)):
                fail(f"data.{stage}.external[{i}].path", f"no file matches {src.path!r}")


def _check_rl(cfg) -> None:
    from components.rl.rollouts import decode_config

    cfg.rollout.decode.check("rl.rollout.decode")
    special = TokenizerIds(vocab_size=None, **DEFAULT_SPECIAL_IDS)
    with _context("rl.rollout"):
        decode_config(cfg.rollout, special, temperature=cfg.rollout.temperature, seed=None)
    for key in ("train_path", "eval_path"):
        path = getattr(cfg.prompts, key)
        if cfg.prompts.source == "jsonl" and path and not Path(path).is_file():
            fail(f"rl.prompts.{key}", f"file not found: {path}")


def _check_bench(cfg) -> None:
    from components.evaluate.tasks import load_task

    for i, setting in enumerate(cfg.settings):
        with _context(f"bench.settings[{i}]"):
            setting.decode.load(overrides=cfg.decode_overrides)
    if cfg.prompts.task:
        with _context("bench.prompts.task"):
            load_task(cfg.prompts.task, list(cfg.prompts.task_overrides))


def _check_eval(cfg) -> None:
    from components.evaluate.runner import build_decode_config, resolve_task
    from components.evaluate.sources import check_source

    if not cfg.tasks:
        fail("eval.tasks", "is empty: name at least one task (conf/task/) or task file")
    for preset in ([cfg.preset] if cfg.preset else []) + list(cfg.presets):
        check_preset("eval.presets" if preset in cfg.presets else "eval.preset", preset)
    for i, name in enumerate(cfg.tasks):
        with _context(f"eval.tasks[{i}]"):
            task = resolve_task(name, list(cfg.task_overrides))
            task.decode.check("decode")
            for preset in {cfg.preset or task.decode.preset, *cfg.presets}:
                build_decode_config(task, preset)
            check_source(task)


# ------------------------------------------------------------------------------------------ inputs
def check_input(key: str, uri: str, tracking_uri: str | None) -> None:
    """A local path must exist; a `runs:/` or `models:/` URI must resolve in the tracking store."""
    text = str(uri)
    if text.startswith(MLFLOW_SCHEMES):
        if tracking_uri is None:
            return  # resolved by the stage against its store; a plain config check has none
        try:
            resolve_uri(text, tracking_uri, what=key)
        except TrackingError as exc:  # the message names `key` and the URI
            raise ConfigError(str(exc)) from exc
        return
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.exists():
        fail(key, f"not found: {text}")


def _local_folder(uri: str | None) -> Path | None:
    if not uri or str(uri).startswith(MLFLOW_SCHEMES):
        return None
    path = Path(str(uri).removeprefix("file://")).expanduser()
    return path if path.is_dir() else None


# ------------------------------------------------------------------------------------------ agreement
def check_agreement(configs: dict[str, Any], init_checkpoint: Path | None = None) -> None:
    """Values several stages read must agree: block lengths, special ids, vocabulary, positions."""
    schemas = {"data_prep": "DataConfig", "cpt": "TrainConfig", "sft": "TrainConfig", "rl": "RLConfig",
               "benchmark": "BenchConfig", "evaluate": "EvalConfig"}
    configs = {stage: cfg for stage, cfg in configs.items() if type(cfg).__name__ == schemas.get(stage)}
    data = configs.get("data_prep")
    trains = [(s, configs[s]) for s in ("cpt", "sft") if s in configs]
    if data is None and trains:
        data = _data_config(trains[-1][1])
    tokenizer = _tokenizer_ids(data, init_checkpoint)
    for stage, train in trains:
        model = _model_config(stage, train, tokenizer)
        # CPT rows are packed to exactly cpt.seq_len tokens (SFT rows vary up to max_seq_len: the
        # trainer checks the longest real row once the data exist).
        if (model is not None and data is not None and data.cpt.enabled and train.stage == "cpt"
                and data.cpt.seq_len > model.max_position_embeddings):
            fail(f"{stage}: train.model", f"{train.model.preset} has max_position_embeddings="
                                          f"{model.max_position_embeddings}, but data.cpt.seq_len is "
                                          f"{data.cpt.seq_len} (lower cpt.seq_len or raise the model's)")
        for key, length in _train_block_lengths(train):
            if data is not None and length and data.block_length % length:
                fail(f"{stage}: train.{key}", f"{length} does not divide the data's block_length "
                                              f"{data.block_length} (rows are padded to multiples of it)")
    if trains:
        stage, last = trains[-1]
        trained = last.trainer.block_length
        if trained:
            for where, length in _decode_block_lengths(configs):
                if length != trained:
                    fail(where, f"decodes with block_length {length}, but {stage} trains the model with "
                                f"trainer.block_length {trained}: use the same block length")
    if tokenizer is not None:
        for where, dcfg in _decode_ids(configs):
            for name in ("eos_id", "mask_id"):
                given = dcfg.get(name)
                if given is not None and given != getattr(tokenizer, name):
                    fail(f"{where}.{name}", f"is {given}, but the tokenizer ({tokenizer.source}) has "
                                            f"{name.removesuffix('_id')} id {getattr(tokenizer, name)}")


def _train_block_lengths(train) -> list[tuple[str, int]]:
    out = [("trainer.block_length", train.trainer.block_length)]
    out += [(f"trainer.block_schedule[{i}].block_length", s.block_length)
            for i, s in enumerate(train.trainer.block_schedule)]
    return out


def _decode_block_lengths(configs: dict[str, Any]) -> list[tuple[str, int]]:
    """(where, block length) of every decoding the pipeline runs on the trained model."""
    out: list[tuple[str, int]] = []
    rl = configs.get("rl")
    if rl is not None:
        out.append(("stage rl: rl.rollout.decode.overrides.block_length", rl.rollout.decode.load().block_length))
    bench = configs.get("benchmark")
    if bench is not None:
        for i, s in enumerate(bench.settings):
            out.append((f"stage benchmark: bench.settings[{i}].decode.block_length",
                        s.decode.load(overrides=bench.decode_overrides).block_length))
    ev = configs.get("evaluate")
    if ev is not None:
        from components.evaluate.runner import build_decode_config, resolve_task

        for i, name in enumerate(ev.tasks):
            task = resolve_task(name, list(ev.task_overrides))
            for preset in sorted({ev.preset or task.decode.preset, *ev.presets}):
                out.append((f"stage evaluate: eval.tasks[{i}] ({name}) decode.block_length in preset {preset}",
                            build_decode_config(task, preset).block_length))
    return out


def _decode_ids(configs: dict[str, Any]) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    bench = configs.get("benchmark")
    if bench is not None:
        for i, s in enumerate(bench.settings):
            out.append((f"stage benchmark: bench.settings[{i}].decode.overrides",
                        {**bench.decode_overrides, **s.decode.overrides}))
    ev = configs.get("evaluate")
    if ev is not None:
        from components.evaluate.runner import resolve_task

        for i, name in enumerate(ev.tasks):
            task = resolve_task(name, list(ev.task_overrides))
            out.append((f"stage evaluate: eval.tasks[{i}] ({name}) decode.overrides", dict(task.decode.overrides)))
    return out


def _tokenizer_ids(data, init_checkpoint: Path | None) -> TokenizerIds | None:
    """The vocabulary size and special ids of the tokenizer the pipeline will use, when known up front."""
    folder = None
    if data is not None and data.tokenizer.path:
        folder = Path(data.tokenizer.path)
    elif init_checkpoint is not None:
        folder = init_checkpoint
    if folder is not None:
        from model.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(folder)
        except Exception as exc:  # noqa: BLE001 - any unreadable tokenizer is one clear line
            raise ConfigError(f"tokenizer in {folder}: cannot be read ({exc})") from exc
        return TokenizerIds(tok.vocab_size, tok.pad_id, tok.eos_id, tok.mask_id, source=f"in {folder}")
    if data is not None:
        return TokenizerIds(data.tokenizer.vocab_size, **DEFAULT_SPECIAL_IDS, source="trained by data_prep")
    return None


def _model_config(stage: str, train, tokenizer: TokenizerIds | None):
    """The ModelConfig a training stage builds from its preset, checked against the tokenizer when known
    (None when the stage starts from a checkpoint)."""
    from components.training.config import model_config
    from model.config import check_tokenizer

    if train.model.init_from:
        return None
    where = f"{stage}: train.model"
    if tokenizer is None:
        with _context(where):
            return model_config(train.model)
    with _context(f"{where} with the tokenizer {tokenizer.source}"):
        cfg = model_config(train.model, tokenizer)
        check_tokenizer(cfg, tokenizer)
    return cfg


def _data_config(train):
    """The data config a training stage prepares its data with (its data.config + overrides)."""
    from components.config import load_config
    from components.data.config import DataConfig

    path = Path(train.data.config)
    return load_config(DataConfig, path if path.is_absolute() else REPO_ROOT / path, list(train.data.overrides))


@dataclass
class TokenizerIds:
    """What the checks read of a tokenizer, known before it exists (our BPE tokenizer's order) or read from one."""

    vocab_size: int | None
    pad_id: int
    eos_id: int
    mask_id: int
    source: str = ""


class _context:
    """Prefix ConfigErrors raised inside with `where` (the stage or key), once."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, ValueError) and not str(exc).startswith(self.where):
            raise ConfigError(f"{self.where}: {exc}") from exc
        return False
