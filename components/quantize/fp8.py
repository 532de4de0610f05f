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


# ------------------------------------------------------------------------------------ FP8 matmul
# The serving-side product of a per-block FP8 weight: activations quantized on the fly in 1x128
# groups (the checkpoint's `activation_scheme: dynamic`), weights in their stored 128x128 tiles.
FP8_KERNELS = ("blockwise", "rowwise_chunks")


def quantize_activations(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (float8 (M, K), float32 scale_inv (M, ceil(K / group))): one scale per
    token and group of `group` channels."""
    return quantize_blockwise(x, (1, group))


def fp8_matmul_reference(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                         block: tuple[int, int]) -> torch.Tensor:
    """What an exact FP8 kernel computes from these operands: both dequantized, float32 product (M, N)."""
    x = dequantize_blockwise(xq, x_scale, (1, block[1]))
    w = dequantize_blockwise(wq, w_scale, block)
    return x @ w.t()


def fp8_matmul(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
               block: tuple[int, int], kernel: str, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x @ w.T from FP8 operands on a scaled-matmul kernel (M, N).

    `blockwise`: one `torch.nn.functional.scaled_mm` with 1x128 activation and 128x128 weight scales
    (cuBLASLt on Hopper with CUDA >= 12.9). `rowwise_chunks`: one row-wise scaled matmul per 128-wide
    slice of K, summed in float32; every scale is constant within a slice, so it is exact too, for
    builds without block scaling (and the CPU). Both need K and N to be whole tiles of 128.
    """
    import torch.nn.functional as F

    m, k = xq.shape
    n = wq.shape[0]
    if tuple(block) != (128, 128) or k % 128 or n % 128:
        raise ValueError(f"FP8 kernels need 128x128 weight tiles and K, N multiples of 128; got block "
                         f"{list(block)}, K={k}, N={n}")
    if kernel == "blockwise":
        from torch.nn.functional import ScalingType, SwizzleType

        tiles_k = k // 128
        padded = -(-tiles_k // 4) * 4  # cuBLASLt reads the weight scales in groups of 4 along K
        w_scales = torch.nn.functional.pad(w_scale.float(), (0, padded - tiles_k)).contiguous().t()  # (padded, N/128)
        x_scales = x_scale.float().t().contiguous().t()  # (M, K/128), M-major
        return F.scaled_mm(xq, wq.t(), [x_scales], [ScalingType.BlockWise1x128], [w_scales],
                           [ScalingType.BlockWise128x128], swizzle_a=[SwizzleType.NO_SWIZZLE],
                           swizzle_b=[SwizzleType.NO_SWIZZLE], output_dtype=out_dtype)
    if kernel == "rowwise_chunks":
        out = torch.zeros(m, n, dtype=torch.float32, device=xq.device)
        for j in range(k // 128):
            cols = slice(j * 128, (j + 1) * 128)
            a = xq[:, cols].contiguous()  # (M, 128)
            b = wq[:, cols].contiguous().t()  # (128, N), column-major as the kernel wants
            scale_b = w_scale[:, j].float().repeat_interleave(128)[None, :].contiguous()  # (1, N)
            out += torch._scaled_mm(a, b, x_scale[:, j:j + 1].float().contiguous(), scale_b,
                                    out_dtype=torch.bfloat16).float()
        return out.to(out_dtype)
    raise ValueError(f"kernel must be one of {FP8_KERNELS}, got {kernel!r}")
