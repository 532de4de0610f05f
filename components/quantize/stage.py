"""The quantization stage: checkpoint folder in, quantized checkpoint folder out.

`run_quantize(cfg, model_dir, out_dir)` is the one entry point (CLI and Prefect call it);
`load_model(path)` loads any folder this stage writes (plain, FP8 or int8) ready to decode.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import CheckpointError, DiffusionLM, fill_special_ids
from model.checkpoint import WEIGHTS_NAME
from model.config import CONFIG_NAME, ModelConfig
from model.files import atomic_dir
from model.fp8 import FP8_DTYPE, FP8_MAX, SCALE_SUFFIX

from .config import INT8_METHODS, QuantizeConfig
from .fp8 import fp8_state_dict, quantization_config
from .int8 import INT8_MARKER, apply_int8, int8_marker

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_quantization_config(path: str | os.PathLike) -> dict | None:
    """The `quantization_config` of a checkpoint folder's config.json, or None."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        return None
    return json.loads(file.read_text()).get("quantization_config")


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a checkpoint folder; FP8 weights are dequantized, int8 folders get their int8 kernels."""
    qcfg = read_quantization_config(path)
    lm = DiffusionLM.from_pretrained(path, dtype=dtype, device=device)
    if isinstance(qcfg, dict) and qcfg.get("quant_method") == INT8_MARKER:
        apply_int8(lm, qcfg.get("scheme", "int8_dynamic"), qcfg.get("skip_modules", ["lm_head"]))
    return lm


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(network in eval mode, tokenizer) of a checkpoint folder: plain, FP8 or int8 alike. The one loader
    of everything that decodes from a folder (evaluation, lm-eval, the served pyfunc)."""
    from model.tokenizer import load_tokenizer

    folder = Path(path)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"not a checkpoint folder (no {CONFIG_NAME}): {folder}")
    lm, tokenizer = load_model(folder, dtype=dtype, device=device).eval(), load_tokenizer(folder)
    fill_special_ids(lm.config, tokenizer)
    return lm, tokenizer


def _check_input(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not (model_dir / CONFIG_NAME).is_file():
        raise CheckpointError(f"{model_dir} has no {CONFIG_NAME}: not a model checkpoint folder")
    qcfg = read_quantization_config(model_dir)
    if qcfg is not None:
        raise CheckpointError(f"{model_dir} is already quantized (quantization_config.quant_method="
                              f"{qcfg.get('quant_method')!r}); quantize the original checkpoint instead")


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _write_fp8(lm, cfg: QuantizeConfig, out: Path) -> list[str]:
    state, names = fp8_state_dict(lm, cfg.block_size, cfg.skip_modules)
    skipped = sorted({n for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear)} - set(names))
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})  # `out` is atomic_dir's temporary folder
    config = dataclasses.replace(lm.config, extra={**lm.config.extra,
                                                   "quantization_config": quantization_config(cfg.block_size, skipped)})
    config.torch_dtype = str(lm.dtype).removeprefix("torch.")
    config.save_pretrained(out)
    return names


def _write_int8(lm, cfg: QuantizeConfig, out: Path) -> list[str]:
    lm.save_pretrained(out)  # original-precision weights; the converter runs at load time
    config = ModelConfig.from_pretrained(out)
    config.extra["quantization_config"] = int8_marker(cfg.method, cfg.skip_modules)
    config.save_pretrained(out)
    from .modules import quantizable_linears

    skip = list(cfg.skip_modules) + (["lm_head"] if cfg.method == "int8_dynamic_fbgemm" else [])
    return quantizable_linears(lm, skip)


@torch.no_grad()
def _check(original, out: Path, cfg: QuantizeConfig) -> dict:
    """Reload the output and compare it with the input model: per-weight error and probe logits."""
    reloaded = load_model(out)
    metrics: dict = {}
    if cfg.method == "fp8":
        from safetensors import safe_open

        worst = 0.0
        orig, deqs = dict(original.named_parameters()), dict(reloaded.named_parameters())
        with safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
            for key in f.keys():
                if not key.endswith(SCALE_SUFFIX):
                    continue
                name = key[: -len(SCALE_SUFFIX)]
                w = orig[name].float()
                deq = deqs[name].float()
                worst = max(worst, ((deq - w).norm() / w.norm().clamp_min(1e-30)).item())
        metrics["weight_rel_error_max"] = worst
    g = torch.Generator().manual_seed(0)
    vocab = original.config.vocab_size
    probe = torch.randint(0, vocab, (1, cfg.probe_tokens), generator=g)
    a = original(probe).logits
    b = reloaded(probe).logits
    metrics["probe_logits_max_abs_diff"] = (a - b).abs().max().item()
    metrics["probe_argmax_agreement"] = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return metrics


def run_quantize(cfg: QuantizeConfig, model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Quantize the checkpoint in `model_dir` into `out_dir` (written atomically); return a summary."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_input(model_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"out_dir must differ from model_dir ({model_dir}); the input would be overwritten")
    start = time.perf_counter()
    dtype = _DTYPES[cfg.dtype] if cfg.dtype else None
    lm = DiffusionLM.from_pretrained(model_dir, dtype=dtype)
    with atomic_dir(out_dir) as tmp:  # an existing output is swapped out only once the new one is complete
        if cfg.method == "fp8":
            names = _write_fp8(lm, cfg, tmp)
        elif cfg.method in INT8_METHODS:
            names = _write_int8(lm, cfg, tmp)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        checks = _check(lm, tmp, cfg) if cfg.check else {}
    summary = {
        "method": cfg.method,
        "model_dir": str(model_dir),
        "out_dir": str(out_dir),
        "quantized_modules": len(names),
        "quantized_parameters": sum(dict(lm.named_modules())[n].weight.numel() for n in names),
        "total_parameters": lm.num_parameters(),
        "bytes_in": _folder_bytes(model_dir),
        "bytes_out": _folder_bytes(out_dir),
        "seconds": time.perf_counter() - start,
        **checks,
    }
    if cfg.method == "fp8":
        summary["block_size"] = list(cfg.block_size)
        summary["fp8_max"] = FP8_MAX
        summary["fp8_dtype"] = str(FP8_DTYPE)
    return summary
