"""Hugging Face-style checkpoint folders: config.json + model.safetensors (or shards + index).

The network is built on the meta device and the tensors are assigned as they are read, so a
checkpoint is held in memory once, never twice (the 16B LLaDA2.1-mini needs this).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .files import atomic_path, atomic_write

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder does not match the network its config describes."""


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no 'weight_map'")
        files = sorted({path / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard files that do not exist: {missing}")
        return files
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise CheckpointError(f"{path} has neither {WEIGHTS_NAME} nor {INDEX_NAME}: not a model checkpoint folder")


def _summarise(names, limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def read_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, optionally cast to `dtype` (floating tensors only)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(path)):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                tensors[key] = t
    return tensors


def check_state_dict(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], where: str) -> None:
    """Raise one error naming every missing, unexpected and mis-shaped tensor."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    misshaped = [f"{k}: checkpoint {list(found[k].shape)} vs model {list(expected[k])}"
                 for k in expected.keys() & found.keys() if found[k].shape != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_summarise(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} tensor(s) with the wrong shape: {_summarise(misshaped)}")
    if problems:
        raise CheckpointError(f"checkpoint {where} does not match its config.json: " + "; ".join(problems))


def expected_shapes(lm) -> dict[str, torch.Size]:
    shapes = {k: v.shape for k, v in lm.state_dict().items()}
    if lm.config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def load_pretrained(cls, path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    config = ModelConfig.from_pretrained(path)
    with torch.device("meta"):
        lm = cls(config)
    qcfg = config.extra.get("quantization_config")
    if qcfg is not None:
        state = _read_quantized(path, qcfg, dtype, device)
        # The network now holds ordinary weights: saving it again must not claim it is quantized.
        config.extra.pop("quantization_config")
    else:
        state = read_state_dict(path, dtype=dtype, device=device)
    check_state_dict(expected_shapes(lm), state, str(path))
    if dtype is None:
        float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
        dtype = float_dtypes.pop() if len(float_dtypes) == 1 else torch.float32
    # Buffers stored in the checkpoint (router expert_bias) keep float32 as the reference does.
    lm.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        lm.lm_head.weight = lm.model.word_embeddings.weight
    for name, param in lm.named_parameters():
        if param.is_floating_point() and param.dtype != dtype:
            raise CheckpointError(f"tensor {name} is {param.dtype} while the rest of the checkpoint is {dtype}; "
                                  f"pass dtype= to from_pretrained to cast everything")
    return lm.eval()


# Quantization methods whose folders this loader reads (see model/fp8.py and components/quantize).
# "draftedit_int8" folders store the original-precision weights; components.quantize.load_model
# applies the int8 kernels after loading.
QUANT_METHODS = ("fp8", "draftedit_int8")


def _read_quantized(path: Path, qcfg, dtype: torch.dtype | None, device) -> dict[str, torch.Tensor]:
    """Tensors of a quantized folder: fine-grained FP8 weights are dequantized blockwise on load."""
    from . import fp8

    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    if method not in QUANT_METHODS:
        raise CheckpointError(f"{path}: quantization_config.quant_method={method!r} is not supported "
                              f"(supported: {', '.join(QUANT_METHODS)})")
    if method != "fp8":
        return read_state_dict(path, dtype=dtype, device=device)
    state = read_state_dict(path, dtype=None, device=device)
    target = dtype or fp8.quantized_dtype_of(state)
    try:
        state = fp8.dequantize_state_dict(state, qcfg, target)
    except fp8.FP8FormatError as err:
        raise CheckpointError(f"FP8 checkpoint {path}: {err}") from err
    if dtype is not None:
        state = {k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()}
    return state


def save_pretrained(lm, path, max_shard_bytes: int | None = None) -> None:
    """Write config.json and the weights (sharded with an index when larger than `max_shard_bytes`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in lm.state_dict().items()}
    if lm.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    config = lm.config
    config.torch_dtype = str(lm.dtype).removeprefix("torch.")
    shards = _split_shards(state, max_shard_bytes)
    for stale in list(path.glob("model*.safetensors")) + [path / INDEX_NAME]:
        if stale.exists():
            stale.unlink()
    if len(shards) == 1:
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(shards[0], str(tmp), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            with atomic_path(path / name) as tmp:
                save_file(shard, str(tmp), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write(path / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    config.save_pretrained(path)


def _split_shards(state: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if not max_shard_bytes:
        return [state]
    shards, current, size = [], {}, 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += nbytes
    shards.append(current)
    return shards
