"""Throughput benchmark (TPS, TPF, latency, memory, score) with the reference and AR baselines."""

from .baselines import autoregressive_config, reference_generate
from .config import BaselineConfig, BenchConfig, BenchmarkError, PromptSetConfig, SettingConfig
from .machine import describe_machine
from .runner import run_benchmark

__all__ = ["autoregressive_config", "reference_generate", "BaselineConfig", "BenchConfig", "BenchmarkError",
           "PromptSetConfig", "SettingConfig", "describe_machine", "run_benchmark"]
