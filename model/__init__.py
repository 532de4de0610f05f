"""draftedit model: the LLaDA2 block-diffusion network and its draft-and-edit decoder (pure PyTorch)."""

from .config import ConfigError, ModelConfig
from .checkpoint import CheckpointError
from .network import DiffusionLM, ModelOutput

__all__ = ["ModelConfig", "ConfigError", "CheckpointError", "DiffusionLM", "ModelOutput"]

from .decoding import DecodeConfig, GenerationResult, StepRecord, Trajectory, generate  # noqa: E402

__all__ += ["DecodeConfig", "GenerationResult", "StepRecord", "Trajectory", "generate"]
