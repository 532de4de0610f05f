"""The checkpoint as an MLflow pyfunc model that decodes with a chosen preset.

`mlflow.pyfunc.load_model(uri).predict({"prompt": ["2+3="]}, params={"preset": "speedy"})` and
`mlflow models serve -m models:/draftedit@champion --env-manager local` (POST /invocations with
`{"inputs": {"prompt": [...]}, "params": {"preset": "speedy"}}`) both go through
`DraftEditModel.predict`. Input: a `prompt` column (DataFrame or dict of lists); output: one row per
prompt with the completion, its token count, forwards and tokens per forward.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

CHECKPOINT_ARTIFACT = "checkpoint"
SERVE_PRESET_KEY = "serve_preset"  # model config key of the preset a request without one decodes with
# Decoding settings a request may change besides the preset (all numeric; see DecodeConfig).
REQUEST_PARAMS = {"gen_length": int, "threshold": float, "editing_threshold": float, "temperature": float, "seed": int}
# Prompts are wrapped in the checkpoint's chat template (one user turn) unless params say chat=false.


def _prompts(model_input: Any) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        if "prompt" in model_input.columns:
            values = model_input["prompt"].tolist()
        elif len(model_input.columns) == 1:
            values = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(f"input needs a 'prompt' column; got columns {list(model_input.columns)}")
    elif isinstance(model_input, dict):
        if "prompt" not in model_input:
            raise ValueError(f"input needs a 'prompt' key; got keys {sorted(model_input)}")
        values = model_input["prompt"]
        values = [values] if isinstance(values, str) else list(values)
    else:
        values = list(model_input)
    # MLflow's schema enforcement turns {"prompt": [a, b]} into one row holding the list: unnest it.
    flat: list[Any] = []
    for value in values:
        if hasattr(value, "tolist") and not isinstance(value, str):  # numpy array
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            flat.extend(value)
        else:
            flat.append(value)
    values = flat
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"every prompt must be a non-empty string; rows {bad[:5]} are not")
    return values


class RequestRejected(ValueError):
    """A request refused before any decoding: `status` is the HTTP answer (400 bad, 413 too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DecodingStopped(TimeoutError):
    """Decoding stopped between two steps: the request's deadline passed or the server is stopping."""


def check_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Request params checked by name and type: a misspelled or unknown name is an error naming it,
    never silently dropped; bool is not accepted as a number."""
    params = dict(params or {})
    allowed = ["preset", "chat", *REQUEST_PARAMS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RequestRejected(f"unknown parameter {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        if name == "preset":
            ok = isinstance(value, str)
        elif name == "chat":
            ok = isinstance(value, bool)
        elif REQUEST_PARAMS[name] is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            kind = {"preset": "a string", "chat": "true or false"}.get(name) or (
                "an integer" if REQUEST_PARAMS[name] is int else "a number")
            raise RequestRejected(f"parameter {name!r} must be {kind}, got {value!r}")
        checked[name] = value if name in ("preset", "chat") else REQUEST_PARAMS[name](value)
    return checked


class DraftEditModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint (model + tokenizer) once; decodes batches of prompts per request."""

    def load_context(self, context) -> None:
        from components.quantize import load_checkpoint

        config = dict(context.model_config or {})
        ckpt = context.artifacts.get(CHECKPOINT_ARTIFACT) if context.artifacts else None
        ckpt = ckpt or config.get("checkpoint_path")
        if not ckpt or not Path(ckpt).is_dir():
            raise FileNotFoundError(f"draftedit pyfunc: checkpoint folder not found: {ckpt!r}")
        self.checkpoint_dir = str(ckpt)
        # written by log_pyfunc_model: the pipeline's serve_preset (models logged before it had its own
        # key wrote "preset")
        self.default_preset = config.get(SERVE_PRESET_KEY) or config["preset"]
        self.lm, self.tokenizer = load_checkpoint(self.checkpoint_dir)

    def decode_config(self, params: dict[str, Any] | None):
        params = check_params(params)
        params.pop("chat", None)
        return self.preset_config(params.pop("preset", None), **params)

    def preset_config(self, preset: str | None, **fields: Any):
        """The DecodeConfig of `preset` (default: the model's serving preset) with `fields` set; an unknown
        preset or an out-of-range value is a RequestRejected naming it."""
        from components.config import ConfigError
        from components.presets import load_decode_config

        try:
            return load_decode_config(preset or self.default_preset, **fields)
        except (ConfigError, ValueError) as exc:
            raise RequestRejected(str(exc).splitlines()[0]) from None

    # A DataFrame is what MLflow hands over after enforcing the logged signature; MLflow infers no schema
    # from this hint, so that signature (with params) stays the interface, and `_prompts` still accepts
    # the other shapes a direct caller may pass.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.complete(_prompts(model_input), params)

    def complete(self, prompts: list[str], params: dict[str, Any] | None = None, *, max_prompt_tokens: int | None = None,
                 max_gen_length: int | None = None, should_stop=None):
        """Decode `prompts`; the limits (when given) are checked before any decoding, and
        `should_stop()` is asked after every decoding step (True raises DecodingStopped)."""
        import pandas as pd

        cfg = self.decode_config(params)
        ids = self.encode(prompts, chat=check_params(params).get("chat", True))
        self.check_request(ids, cfg, max_prompt_tokens=max_prompt_tokens, max_gen_length=max_gen_length)

        def on_step(*_step) -> None:
            if should_stop():
                raise DecodingStopped("decoding stopped before it finished")

        result = self.generate(ids, cfg, on_step=on_step if should_stop is not None else None)
        rows = []
        for seq, forwards in zip(result.sequences, result.forwards):
            rows.append(
                {
                    "completion": self.tokenizer.decode(seq, skip_special_tokens=True),
                    "tokens": len(seq),
                    "forwards": int(forwards),
                    "tpf": len(seq) / forwards if forwards else 0.0,
                }
            )
        return pd.DataFrame(rows, columns=["completion", "tokens", "forwards", "tpf"])

    def encode(self, prompts: list[str], chat: bool = True) -> list[list[int]]:
        """Token ids of each prompt, wrapped in the chat template (one user turn) when `chat`."""
        if chat:
            prompts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
        return [self.tokenizer.encode(p) for p in prompts]

    def check_request(self, ids: list[list[int]], cfg, *, max_prompt_tokens: int | None = None,
                      max_gen_length: int | None = None) -> None:
        """The server's limits and the decoder's own checks, before anything decodes (RequestRejected)."""
        from model.decoding import validate

        if max_gen_length is not None and cfg.gen_length > max_gen_length:
            raise RequestRejected(f"gen_length {cfg.gen_length} is above this server's limit of {max_gen_length}")
        if max_prompt_tokens is not None:
            long = [i for i, seq in enumerate(ids) if len(seq) > max_prompt_tokens]
            if long:
                raise RequestRejected(f"prompt {long[0]} has {len(ids[long[0]])} tokens, above this server's limit of "
                                      f"{max_prompt_tokens}", status=413)
        try:
            validate(self.lm, ids, cfg)  # e.g. prompt + gen_length beyond the model's positions
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None

    def generate(self, ids: list[list[int]], cfg, **hooks):
        """`model.generate` on the loaded network; `hooks` are its on_step, on_block and cancelled."""
        import torch

        from model import generate

        with torch.inference_mode():
            return generate(self.lm, ids, cfg, **hooks)


def model_signature(default_preset: str):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    params = [ParamSpec("preset", "string", default_preset), ParamSpec("chat", "boolean", True)]
    for name, kind in REQUEST_PARAMS.items():
        params.append(ParamSpec(name, "long" if kind is int else "double", None))
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema(
            [ColSpec("string", "completion"), ColSpec("long", "tokens"), ColSpec("long", "forwards"),
             ColSpec("double", "tpf")]
        ),
        params=ParamSchema(params),
    )


def pip_requirements() -> list[str]:
    """Pins of what the pyfunc imports, taken from this environment (no slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "safetensors", "tokenizers", "omegaconf", "mlflow", "pandas"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def log_pyfunc_model(
    checkpoint_dir: str | os.PathLike,
    preset: str,
    name: str = "model",
    copy_checkpoint: bool = True,
):
    """Log the checkpoint as a pyfunc model in the active run; returns MLflow's ModelInfo.

    With `copy_checkpoint=False` the model refers to the checkpoint folder by absolute path instead of
    copying it (for checkpoints too large to duplicate; the folder must then stay where it is).
    """
    checkpoint_dir = Path(checkpoint_dir).resolve()
    if not (checkpoint_dir / "config.json").is_file():
        raise FileNotFoundError(f"not a checkpoint folder (no config.json): {checkpoint_dir}")
    # MLflow also logs the model config as run params; the evaluate run's own `preset` param (the suite's
    # headline preset) must not collide with it
    config = {SERVE_PRESET_KEY: preset}
    artifacts = None
    if copy_checkpoint:
        artifacts = {CHECKPOINT_ARTIFACT: str(checkpoint_dir)}
    else:
        config["checkpoint_path"] = str(checkpoint_dir)
    with warnings.catch_warnings():
        # MLflow advises an input example; it would make logging decode once, and the signature
        # (with params) already describes the interface.
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code: no pickle
            artifacts=artifacts,
            model_config=config,
            signature=model_signature(preset),
            pip_requirements=pip_requirements(),
        )
