"""Per-block FP8 checkpoints (writer side) and in-memory FP8 rounding of a model.

The format and the loader live in `model/fp8.py`; here a loaded `DiffusionLM` is turned into the
Hugging Face fine-grained FP8 layout (float8_e4m3fn weight + float32 `weight_scale_inv` per tile).
"""

from __future__ import annotations

import torch

from model.fp8 import SCALE_SUFFIX, dequantize_blockwise, quantize_blockwise

from .modules import quantizable_linears


def quantization_config(block_size: list[int] | tuple[int, int], skipped: list[str]) -> dict:
    """The `quantization_config` entry of config.json, as transformers' FineGrainedFP8Config writes it."""
    return {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [int(block_size[0]), int(block_size[1])],
        "modules_to_not_convert": sorted(skipped),
    }


def fp8_state_dict(lm, block_size, skip_modules) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model's state dict with every quantizable linear weight in FP8 plus its scale.

    Returns (tensors to save, names of the quantized modules).
    """
    block = (int(block_size[0]), int(block_size[1]))
    names = quantizable_linears(lm, skip_modules)
    state = {k: v.detach().contiguous().cpu() for k, v in lm.state_dict().items()}
    if lm.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for name in names:
        key = f"{name}.weight"
        q, scale_inv = quantize_blockwise(state[key], block)
        state[key] = q
        state[key + SCALE_SUFFIX] = scale_inv
    return state, names


@torch.no_grad()
def round_to_fp8(lm, block_size=(128, 128), skip_modules=("lm_head",)) -> list[str]:
    """Replace each quantizable weight by its FP8 quantize-dequantize image, in place.

    The model then computes exactly what a dequantizing FP8 loader would give (same numbers, original
    precision kernels): this is how the benchmark measures the score change of FP8 on a CPU.
    """
    block = (int(block_size[0]), int(block_size[1]))
    names = quantizable_linears(lm, skip_modules)
    modules = dict(lm.named_modules())
    for name in names:
        w = modules[name].weight
        q, scale_inv = quantize_blockwise(w, block)
        w.copy_(dequantize_blockwise(q, scale_inv, block, w.dtype, name=name))
    return names
