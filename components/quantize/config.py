"""Schema of the quantization stage (its defaults: `conf/quantize/fp8.yaml`, the default method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from components.config import check_choice, check_min, conf_defaults, fail

# fp8: per-block float8 e4m3 in the Hugging Face fine-grained layout (portable; dequantized on CPU).
# int8_*: CPU-fast paths applied by a converter after loading (see components/quantize/int8.py).
METHODS = ("fp8", "int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm")
INT8_METHODS = METHODS[1:]
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
@conf_defaults("quantize/fp8.yaml")
class QuantizeConfig:
    method: str
    # fp8 only: tile of one scale, [rows (out features), cols (in features)].
    block_size: list[int]
    # Linear modules kept in original precision, matched by whole dotted name components
    # ("lm_head", "attention.dense", "mlp"); embeddings, norms and the router are never quantized.
    skip_modules: list[str]
    # Precision of the tensors left unquantized in the output (null = as in the input checkpoint).
    dtype: Optional[str]
    # After writing: reload the output and compare its weights and logits with the input model.
    check: bool
    probe_tokens: int  # length of the random probe sequence used by the check

    def __post_init__(self) -> None:
        check_choice("quantize.method", self.method, METHODS)
        if (len(self.block_size) != 2 or not all(isinstance(b, int) and b > 0 for b in self.block_size)):
            fail("quantize.block_size", f"must be two positive integers, got {list(self.block_size)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            fail("quantize.dtype", f"must be one of {DTYPES} or null, got {self.dtype!r}")
        if any(not s or s.startswith(".") or s.endswith(".") for s in self.skip_modules):
            fail("quantize.skip_modules", f"entries must be dotted module names, got {list(self.skip_modules)}")
        check_min("quantize.probe_tokens", self.probe_tokens, 1)
