"""Hugging Face-style checkpoint folders: config.json + model.safetensors (or shards + index).

The network is built on the meta device and the tensors are assigned as they are read, so a
checkpoint is held in memory once, never twice (the 16B LLaDA2.1-mini needs this).
"""

from __future__ import annotations

import json
import os
import zlib
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


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[torch.Size, str]]:
    """Shape and dtype name ("BF16", ...) of every tensor of a checkpoint folder, read from the
    safetensors headers only, so a 16B folder is checked in a second without reading its weights."""
    path = Path(path)
    files = _weight_files(path)
    found: dict[str, tuple[torch.Size, str]] = {}
    held: dict[str, set[str]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            held[file.name] = set(f.keys())
            for key in held[file.name]:
                view = f.get_slice(key)
                found[key] = (torch.Size(view.get_shape()), view.get_dtype())
    index = path / INDEX_NAME
    if index.is_file():
        absent = sorted(f"{key} (in {name})" for key, name in json.loads(index.read_text())["weight_map"].items()
                        if key not in held.get(name, ()))
        if absent:
            raise CheckpointError(f"{index} maps {len(absent)} tensor(s) to shards that do not hold them: "
                                  f"{_summarise(absent)}")
    return found


def check_state_dict(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], where: str) -> None:
    """Raise one error naming every missing, unexpected and mis-shaped tensor."""
    check_shapes(expected, {k: t.shape for k, t in found.items()}, where)


def check_shapes(expected: dict[str, torch.Size], found: dict[str, torch.Size], where: str) -> None:
    """check_state_dict on shapes alone (from read_shapes: before any tensor is read)."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    misshaped = [f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}"
                 for k in expected.keys() & found.keys() if found[k] != expected[k]]
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


def config_shapes(cls, config: ModelConfig) -> dict[str, torch.Size]:
    """Every tensor a checkpoint of `config` holds, by its released key name; nothing is allocated
    (the network class `cls` is built on the meta device)."""
    with torch.device("meta"):
        return expected_shapes(cls(config))


def check_pretrained(cls, path: str | os.PathLike) -> dict:
    """Check a checkpoint folder against its config.json from the headers alone: the config parses,
    every shard exists, every tensor is there with the shape the config gives, one dtype throughout.
    Returns a summary (tensors, elements, dtype, shard files)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    config = ModelConfig.from_pretrained(path)
    found = read_shapes(path)
    expected = config_shapes(cls, config)
    if config.extra.get("quantization_config") is None:
        check_shapes(expected, {k: shape for k, (shape, _) in found.items()}, str(path))
    dtypes = sorted({dtype for _, dtype in found.values()})
    if len(dtypes) > 1:
        by_dtype = {d: sorted(k for k, (_, kd) in found.items() if kd == d) for d in dtypes}
        rare = min(by_dtype, key=lambda d: len(by_dtype[d]))
        raise CheckpointError(f"checkpoint {path} mixes dtypes {dtypes}: {len(by_dtype[rare])} tensor(s) are "
                              f"{rare} ({_summarise(by_dtype[rare], 3)}); expected one dtype throughout")
    return {"tensors": len(found), "elements": sum(shape.numel() for shape, _ in found.values()),
            "dtype": dtypes[0] if dtypes else None, "shards": [f.name for f in _weight_files(path)]}


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
        # Headers first: a folder that does not match its config fails before any weight is read.
        check_shapes(expected_shapes(lm), {k: shape for k, (shape, _) in read_shapes(path).items()}, str(path))
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
    groups = _plan_shards({k: t.numel() * t.element_size() for k, t in state.items()}, max_shard_bytes)
    _remove_weights(path)
    if len(groups) == 1:
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, keys in enumerate(groups):
            weight_map.update(_write_shard(path, i, len(groups), {k: state[k] for k in keys}))
        _write_index(path, weight_map, sum(t.numel() * t.element_size() for t in state.values()))
    config.save_pretrained(path)


def random_model(cls, config: ModelConfig, dtype: torch.dtype = torch.float32, seed: int = 0):
    """The network of `config` with the random weights `save_random_pretrained` writes for the same
    seed and dtype (each module drawn from its own seed, so the values do not depend on sharding)."""
    lm = _meta_model(cls, config, dtype)
    for name in _owners(lm):
        _init_module(lm, name, seed)
    if config.tie_word_embeddings:
        lm.lm_head.weight = lm.model.word_embeddings.weight
    return lm.eval()


def save_random_pretrained(cls, config: ModelConfig, path, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                           max_shard_bytes: int = 5_000_000_000) -> dict:
    """Write a random-initialised checkpoint of `config` as shards + index, holding one shard in memory
    at a time (the full LLaDA2.1-mini shape is 32 GB in bf16). Returns the index's figures."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lm = _meta_model(cls, config, dtype)
    owners = _owners(lm)
    groups = _plan_shards({name: sum(t.numel() * t.element_size() for t in tensors)
                           for name, tensors in owners.items()}, max_shard_bytes)
    _remove_weights(path)
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(groups):
        shard = {}
        for name in names:
            module = _init_module(lm, name, seed)
            shard.update({f"{name}.{local}": t.detach() for local, t in _direct_tensors(module).items()})
        weight_map.update(_write_shard(path, i, len(groups), shard))
        total += sum(t.numel() * t.element_size() for t in shard.values())
        for name in names:  # back to meta: the next shard starts from free memory
            lm.get_submodule(name).to_empty(device="meta", recurse=False)
    _write_index(path, weight_map, total)
    config.torch_dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(path)
    return {"tensors": len(weight_map), "bytes": total, "shards": len(groups)}


def _meta_model(cls, config: ModelConfig, dtype: torch.dtype):
    with torch.device("meta"):
        return cls(config).to(dtype)


def _direct_tensors(module) -> dict[str, torch.Tensor]:
    """A module's own parameters and persistent buffers (not its children's)."""
    return {k: v for k, v in module.state_dict(keep_vars=True).items() if "." not in k}


def _owners(lm) -> dict[str, list[torch.Tensor]]:
    """Module name -> the tensors it stores itself, in state_dict order, for the tensors a checkpoint
    holds. A module is initialised as a whole (the router draws its weight and zeroes its bias)."""
    keep = expected_shapes(lm)
    owners: dict[str, list[torch.Tensor]] = {}
    for key, tensor in lm.state_dict(keep_vars=True).items():
        if key in keep:
            owners.setdefault(key.rpartition(".")[0], []).append(tensor)
    return owners


def _init_module(lm, name: str, seed: int):
    """Allocate module `name` on the CPU and draw its values as DiffusionLM's own initialisation
    does, from a generator seeded by (seed, name)."""
    module = lm.get_submodule(name)
    module.to_empty(device="cpu", recurse=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        lm._init_weights(module)
    return module


def _remove_weights(path: Path) -> None:
    """Weights of an earlier write would mix with the new ones (a stale shard or index)."""
    for stale in list(path.glob("model*.safetensors")) + [path / INDEX_NAME]:
        if stale.exists():
            stale.unlink()


def _write_shard(path: Path, i: int, n: int, shard: dict[str, torch.Tensor]) -> dict[str, str]:
    name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    with atomic_path(path / name) as tmp:
        save_file(shard, str(tmp), metadata={"format": "pt"})
    return {k: name for k in shard}


def _write_index(path: Path, weight_map: dict[str, str], total_bytes: int) -> None:
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write(path / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def _plan_shards(sizes: dict[str, int], max_shard_bytes: int | None) -> list[list[str]]:
    """Names grouped in order into shards of at most `max_shard_bytes` (a larger single item gets
    a shard of its own); no limit means one shard."""
    if not max_shard_bytes:
        return [list(sizes)]
    shards, current, size = [], [], 0
    for name, nbytes in sizes.items():
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    return shards
