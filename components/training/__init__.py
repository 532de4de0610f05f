"""CPT / SFT training with the mixed M2T + T2T objective (LLaDA2.1), Multi-Turn Forward and friends.

Entry point: `run_training(cfg, out_dir) -> dict` (see run.py); `draftedit train` wraps it (cli.py).
"""

from .config import (
    AveragingConfig,
    BlockStage,
    DataSection,
    LoraSection,
    ModelSection,
    MoESection,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    TrainerSection,
)
from .run import TrainingInputError, load_train_config, run_training

__all__ = [
    "AveragingConfig", "BlockStage", "DataSection", "LoraSection", "ModelSection", "MoESection",
    "ObjectiveConfig", "OptimConfig", "TrainConfig", "TrainerSection", "TrainingInputError",
    "load_train_config", "run_training",
]
