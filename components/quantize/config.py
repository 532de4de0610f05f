"""Schema of the quantization stage (defaults in `conf/quantize/*.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# fp8: per-block float8 e4m3 in the Hugging Face fine-grained layout (portable; dequantized on CPU).
# int8_*: CPU-fast paths applied by a converter after loading (see components/quantize/int8.py).
METHODS = ("fp8", "int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm")
INT8_METHODS = METHODS[1:]
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class QuantizeConfig:
    method: str = "fp8"
    # fp8 only: tile of one scale, [rows (out features), cols (in features)].
    block_size: list[int] = field(default_factory=lambda: [128, 128])
    # Linear modules kept in original precision, matched by whole dotted name components
    # ("lm_head", "attention.dense", "mlp"); embeddings, norms and the router are never quantized.
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])
    # Precision of the tensors left unquantized in the output (null = as in the input checkpoint).
    dtype: Optional[str] = None
    # After writing: reload the output and compare its weights and logits with the input model.
    check: bool = True
    probe_tokens: int = 64  # length of the random probe sequence used by the check

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"quantize.method must be one of {METHODS}, got {self.method!r}")
        if (len(self.block_size) != 2 or not all(isinstance(b, int) and b > 0 for b in self.block_size)):
            raise ValueError(f"quantize.block_size must be two positive integers, got {list(self.block_size)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"quantize.dtype must be one of {DTYPES} or null, got {self.dtype!r}")
        if any(not s or s.startswith(".") or s.endswith(".") for s in self.skip_modules):
            raise ValueError(f"quantize.skip_modules entries must be dotted module names, got {list(self.skip_modules)}")
        if self.probe_tokens < 1:
            raise ValueError(f"quantize.probe_tokens must be >= 1, got {self.probe_tokens}")
