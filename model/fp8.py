"""Per-block FP8 (e4m3) weights in the Hugging Face fine-grained FP8 layout.

The layout (used by DeepSeek-V3 and read by transformers' `FineGrainedFP8Config`, vLLM, SGLang):
  * config.json holds `quantization_config = {"quant_method": "fp8", "fmt": "e4m3",
    "activation_scheme": "dynamic", "weight_block_size": [128, 128]}`;
  * each quantized linear weight `<name>.weight` is stored as float8_e4m3fn, shape (out, in);
  * beside it `<name>.weight_scale_inv` (float32, shape (ceil(out/128), ceil(in/128))) holds one
    factor per 128x128 tile; the real weight is `fp8_value * weight_scale_inv` of its tile.
    (The name is the inverse of the quantization scale: the tile was stored as w / scale_inv.)

This module is pure PyTorch: `quantize_blockwise` / `dequantize_blockwise` for one tensor and
`dequantize_state_dict` used by `model.checkpoint` when it loads such a folder. On CPU (no FP8
matmul) the weights are dequantized once at load time.
"""

from __future__ import annotations

import math
from typing import Any

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
SCALE_SUFFIX = "_scale_inv"  # "<name>.weight" -> "<name>.weight_scale_inv"
DEFAULT_BLOCK = (128, 128)


class FP8FormatError(ValueError):
    """A fine-grained FP8 checkpoint is inconsistent (bad config, missing or mis-shaped scales)."""


def scale_shape(weight_shape: tuple[int, ...] | torch.Size, block: tuple[int, int]) -> tuple[int, int]:
    """Tiles of a 2-D weight: (ceil(out / block_out), ceil(in / block_in)); edge tiles may be partial."""
    out_features, in_features = weight_shape
    return math.ceil(out_features / block[0]), math.ceil(in_features / block[1])


def _tiles(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """(out, in) -> (tiles_out, block_out, tiles_in, block_in), zero-padded at the edges."""
    out_features, in_features = x.shape
    t_out, t_in = scale_shape(x.shape, block)
    padded = torch.nn.functional.pad(x, (0, t_in * block[1] - in_features, 0, t_out * block[0] - out_features))
    return padded.view(t_out, block[0], t_in, block[1])


def quantize_blockwise(weight: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (float8_e4m3fn weight of the same shape, float32 scale_inv per tile).

    Each tile is scaled so its largest magnitude maps to 448 (the largest e4m3 value), then rounded
    to nearest by the float8 cast. An all-zero tile gets scale 1 (any scale would do).
    """
    if weight.dim() != 2:
        raise FP8FormatError(f"only 2-D weights can be block-quantized, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    tiles = _tiles(w, block)  # (To, bo, Ti, bi)
    amax = tiles.abs().amax(dim=(1, 3))  # (To, Ti)
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # (To, Ti)
    scaled = tiles / scale_inv[:, None, :, None]
    q = scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    q = q.view(tiles.shape[0] * block[0], tiles.shape[2] * block[1])[: w.shape[0], : w.shape[1]]
    return q.contiguous(), scale_inv.contiguous()


def dequantize_blockwise(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK,
                         dtype: torch.dtype = torch.float32, name: str = "weight") -> torch.Tensor:
    """float8 weight (out, in) times its tile's scale_inv -> `dtype` weight (out, in).

    Raises FP8FormatError naming `name` when the scale's shape is not the weight's tile grid.
    """
    if weight.dim() != 2:
        raise FP8FormatError(f"{name}: an FP8 weight must be 2-D, got shape {tuple(weight.shape)}")
    expected = scale_shape(weight.shape, block)
    if tuple(scale_inv.shape) != expected:
        raise FP8FormatError(
            f"{name}{SCALE_SUFFIX} has shape {list(scale_inv.shape)} but weight {name} of shape "
            f"{list(weight.shape)} with weight_block_size {list(block)} needs {list(expected)} "
            f"(one scale per {block[0]}x{block[1]} tile)")
    tiles = _tiles(weight.float(), block)  # (To, bo, Ti, bi)
    full = (tiles * scale_inv.float()[:, None, :, None]).view(tiles.shape[0] * block[0], tiles.shape[2] * block[1])
    return full[: weight.shape[0], : weight.shape[1]].to(dtype).contiguous()


def parse_quantization_config(qcfg: Any) -> tuple[int, int]:
    """Validate an fp8 `quantization_config` and return its weight block size."""
    if not isinstance(qcfg, dict):
        raise FP8FormatError(f"quantization_config must be a mapping, got {qcfg!r}")
    if qcfg.get("quant_method") != "fp8":
        raise FP8FormatError(f"quantization_config.quant_method must be 'fp8', got {qcfg.get('quant_method')!r}")
    fmt = qcfg.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise FP8FormatError(f"quantization_config.fmt={fmt!r} is not supported (only 'e4m3')")
    block = qcfg.get("weight_block_size")
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise FP8FormatError(
            f"quantization_config.weight_block_size must be two positive integers such as [128, 128], got {block!r} "
            f"(per-tensor FP8 checkpoints without block scales are not supported)")
    return int(block[0]), int(block[1])


def dequantize_state_dict(state: dict[str, torch.Tensor], qcfg: dict, dtype: torch.dtype
                          ) -> dict[str, torch.Tensor]:
    """Replace every `<w>` + `<w>_scale_inv` pair by the dequantized `dtype` weight.

    Errors (FP8FormatError) name the tensor: a scale without its weight, an FP8 weight without its
    scale, a scale whose shape does not match its weight's tiles.
    """
    block = parse_quantization_config(qcfg)
    out: dict[str, torch.Tensor] = {}
    scales = {k for k in state if k.endswith(SCALE_SUFFIX)}
    for key in sorted(scales):
        name = key[: -len(SCALE_SUFFIX)]
        if name not in state:
            raise FP8FormatError(f"{key} has no weight {name} beside it")
        if state[name].dtype != FP8_DTYPE:
            raise FP8FormatError(f"{name} has a scale ({key}) but is stored as {state[name].dtype}, not float8_e4m3fn")
    for key, tensor in state.items():
        if key in scales:
            continue
        scale_key = key + SCALE_SUFFIX
        if tensor.dtype == FP8_DTYPE:
            if scale_key not in state:
                raise FP8FormatError(f"{key} is float8_e4m3fn but {scale_key} is missing")
            out[key] = dequantize_blockwise(tensor, state[scale_key], block, dtype, name=key)
        else:
            out[key] = tensor
    return out


def quantized_dtype_of(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The precision to dequantize into: that of the checkpoint's other floating tensors (float32 if none)."""
    others = {t.dtype for k, t in state.items()
              if t.is_floating_point() and t.dtype != FP8_DTYPE and not k.endswith(SCALE_SUFFIX)}
    if len(others) > 1:
        others.discard(torch.float32)  # float32 buffers (router expert_bias) beside bf16 weights
    return others.pop() if len(others) == 1 else torch.float32
