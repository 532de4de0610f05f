"""draftedit model: the LLaDA2 block-diffusion network and its draft-and-edit decoder (pure PyTorch)."""

from .config import ConfigError, ModelConfig, check_tokenizer, fill_special_ids
from .checkpoint import CheckpointError
from .network import DiffusionLM, ModelOutput

__all__ = ["ModelConfig", "ConfigError", "CheckpointError", "DiffusionLM", "ModelOutput", "check_tokenizer", "fill_special_ids"]

from .decoding import DecodeConfig, GenerationResult, StepRecord, Trajectory, generate  # noqa: E402

__all__ += ["DecodeConfig", "GenerationResult", "StepRecord", "Trajectory", "generate"]
