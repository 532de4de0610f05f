"""CPU-fast int8 paths: converters applied to a loaded model (torchtitan-style), kept out of `model/`.

Schemes:
  * `int8_dynamic`: torchao `Int8DynamicActivationInt8WeightConfig` (int8 weights per channel,
    activations quantized per token at run time, int8 GEMM);
  * `int8_weight_only`: torchao `Int8WeightOnlyConfig` (int8 weights, float activations);
  * `int8_dynamic_fbgemm`: PyTorch's own FBGEMM dynamic quantization (`torch.ao.quantization.
    quantize_dynamic`). It is deprecated upstream in favour of torchao, but on x86 CPUs it is still
    the fastest kernel we measured, so it is kept for comparison. It always keeps `lm_head` in
    float (the network reads its weight to know its dtype and device). Its activation scale is one
    per input tensor, i.e. shared by every row of a batch, so batched decoding may differ from
    batch-1 decoding; the torchao schemes scale per token and stay batch-invariant.

Storage: an int8 folder holds the *original-precision* weights plus a marker in config.json,
`quantization_config = {"quant_method": "draftedit_int8", "scheme": ..., "skip_modules": [...]}`;
`load_model` re-applies the converter after loading. Quantization is deterministic, so the reloaded
model is bit-identical to the converted one, and the folder does not depend on torchao's pickled
tensor subclasses (which change across torchao versions). The price is no saving on disk.
"""

from __future__ import annotations

import importlib
import logging
import warnings

import torch

from .modules import quantizable_linears

INT8_MARKER = "draftedit_int8"
# What torchao logs while it is imported is about pieces these schemes never use: prebuilt kernels for
# other CUDA architectures or Python versions (`Failed to load ... _C_mxfp8`, `_C_cutlass_90a`), Triton
# on a CPU-only install (`Detected no triton`), and torch's notice that torchao registers an Enum the
# deprecated way. These loggers stay at ERROR during the import only; what torchao logs later shows.
_TORCHAO_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


def import_torchao():
    """`import torchao` without its import-time notices (see above); errors still raise and log."""
    loggers = [logging.getLogger(name) for name in _TORCHAO_IMPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module("torchao")
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _torchao_config(scheme: str):
    import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return {"int8_dynamic": Int8DynamicActivationInt8WeightConfig, "int8_weight_only": Int8WeightOnlyConfig}[scheme]()


def apply_int8(lm, scheme: str, skip_modules=("lm_head",)) -> list[str]:
    """Convert the quantizable linears of `lm` in place; returns their names."""
    if scheme not in ("int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm"):
        raise ValueError(f"unknown int8 scheme {scheme!r}; expected int8_dynamic, int8_weight_only or "
                         f"int8_dynamic_fbgemm")
    if lm.device.type != "cpu" and scheme == "int8_dynamic_fbgemm":
        raise ValueError("int8_dynamic_fbgemm runs on CPU only; move the model to CPU or use int8_dynamic")
    skip = list(skip_modules)
    if scheme == "int8_dynamic_fbgemm" and "lm_head" not in skip:
        skip.append("lm_head")
    names = quantizable_linears(lm, skip)
    if not names:
        return names
    if scheme == "int8_dynamic_fbgemm":
        if lm.dtype != torch.float32:
            raise ValueError(f"int8_dynamic_fbgemm needs a float32 model, got {lm.dtype}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the upstream deprecation notice, documented above
            torch.ao.quantization.quantize_dynamic(lm, qconfig_spec=set(names), dtype=torch.qint8, inplace=True)
        return names
    import_torchao()
    from torchao.quantization import quantize_

    wanted = set(names)
    quantize_(lm, _torchao_config(scheme), filter_fn=lambda module, fqn: fqn in wanted)
    return names


def int8_marker(scheme: str, skip_modules) -> dict:
    torchao = import_torchao()
    return {"quant_method": INT8_MARKER, "scheme": scheme, "skip_modules": list(skip_modules),
            "torchao_version": torchao.__version__}
