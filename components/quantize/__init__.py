"""Quantization stage: per-block FP8 checkpoints (portable) and CPU-fast int8 (torchao) converters."""

from .config import METHODS, QuantizeConfig
from .fp8 import fp8_state_dict, round_to_fp8
from .int8 import apply_int8
from .modules import quantizable_linears
from .stage import load_checkpoint, load_model, read_quantization_config, run_quantize

__all__ = ["METHODS", "QuantizeConfig", "fp8_state_dict", "round_to_fp8", "apply_int8", "quantizable_linears", "load_checkpoint",
           "load_model", "read_quantization_config", "run_quantize"]
