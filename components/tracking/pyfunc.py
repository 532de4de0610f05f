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

CHECKPOINT_ARTIFACT = "checkpoint"
DEFAULT_PRESET = "quality"
# Decoding settings a request may change besides the preset (all numeric; see DecodeConfig).
REQUEST_PARAMS = {"gen_length": int, "threshold": float, "editing_threshold": float, "temperature": float, "seed": int}
# Prompts are wrapped in the checkpoint's chat template (one user turn) unless params say chat=false.


def _prompts(model_input: Any) -> list[str]:
    import pandas as pd

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


# MLflow warns at class creation that predict() lacks type hints; our signature (with params) is explicit
# and accepts several input shapes, which type-hint validation would reject.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*", category=UserWarning)


class DraftEditModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint (model + tokenizer) once; decodes batches of prompts per request."""

    def load_context(self, context) -> None:
        from components.quantize import load_model
        from model.tokenizer import load_tokenizer

        config = dict(context.model_config or {})
        ckpt = context.artifacts.get(CHECKPOINT_ARTIFACT) if context.artifacts else None
        ckpt = ckpt or config.get("checkpoint_path")
        if not ckpt or not Path(ckpt).is_dir():
            raise FileNotFoundError(f"draftedit pyfunc: checkpoint folder not found: {ckpt!r}")
        self.checkpoint_dir = str(ckpt)
        self.default_preset = config.get("preset", DEFAULT_PRESET)
        self.lm = load_model(self.checkpoint_dir).eval()  # plain, FP8 or int8 checkpoints
        self.tokenizer = load_tokenizer(self.checkpoint_dir)

    def decode_config(self, params: dict[str, Any] | None):
        from components.decoding import load_decode_config

        params = dict(params or {})
        params.pop("chat", None)
        preset = params.pop("preset", None) or self.default_preset
        unknown = sorted(set(params) - set(REQUEST_PARAMS))
        if unknown:
            raise ValueError(f"unknown decoding params {unknown}; allowed: preset, chat, {', '.join(REQUEST_PARAMS)}")
        overrides = {k: REQUEST_PARAMS[k](v) for k, v in params.items() if v is not None}
        return load_decode_config(preset, **overrides)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch

        from model import generate

        prompts = _prompts(model_input)
        cfg = self.decode_config(params)
        chat = (params or {}).get("chat", True)
        if chat is None or chat:
            prompts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
        ids = [self.tokenizer.encode(p) for p in prompts]
        with torch.inference_mode():
            result = generate(self.lm, ids, cfg)
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


def model_signature(default_preset: str = DEFAULT_PRESET):
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
    preset: str = DEFAULT_PRESET,
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
    config = {"preset": preset}
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
