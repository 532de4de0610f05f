"""Helpers for the pipeline / tracking tests: a real tiny checkpoint, and fast stand-in stage adapters.

The stand-ins keep the orchestration tests (ordering, URIs, caching, retries, resume, registry)
fast and independent of how long the real stages train; they still produce real checkpoints, so
registration and serving run the real pyfunc on a real (random) model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CORPUS = ["12+7=19", "3+4=7", "sort 3 1 2 -> 1 2 3", "def f(x):\n    return x + 1\n"] * 20


def make_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer, width-32 model with a small BPE tokenizer, in the HF layout."""
    import torch

    from components.data.bpe import train_bpe_tokenizer
    from model import DiffusionLM, ModelConfig

    tok = train_bpe_tokenizer(CORPUS, vocab_size=300, min_frequency=1)
    cfg = ModelConfig.tiny(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        mask_token_id=tok.mask_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
    )
    torch.manual_seed(seed)
    lm = DiffusionLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(folder)
    tok.save(folder)
    return folder


# ------------------------------------------------------------------ stand-in stages
@dataclass
class FakeDataConfig:
    size: int = 3


@dataclass
class FakeTrainConfig:
    stage: str = "cpt"
    seed: int = 0
    loss: float = 1.0
    fail_times: int = 0  # raise a transient error this many times first (counted in a file)
    fail_hard: bool = False  # raise a non-transient error


@dataclass
class FakeEvalConfig:
    score: float = 0.5
    tasks: list[str] = field(default_factory=lambda: ["sum"])
    limit: int | None = None


CALLS: list[tuple[str, dict]] = []  # (adapter, inputs) in call order, for assertions


def fake_prepare(cfg: FakeDataConfig, out_dir: Path, inputs: dict) -> dict:
    CALLS.append(("prepare", dict(inputs)))
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "rows.json").write_text(json.dumps(list(range(cfg.size))))
    return {"data_dir": str(data), "metrics": {"data/rows": float(cfg.size)}}


def fake_train(cfg: FakeTrainConfig, out_dir: Path, inputs: dict) -> dict:
    from flows.runner import TransientError

    CALLS.append((f"train:{cfg.stage}", dict(inputs)))
    if cfg.fail_hard:
        raise ValueError(f"{cfg.stage}: deliberate failure (fail_hard=true)")
    counter = out_dir.parent / f"{cfg.stage}-failures.txt"
    failures = int(counter.read_text()) if counter.exists() else 0
    if failures < cfg.fail_times:
        counter.write_text(str(failures + 1))
        raise TransientError(f"{cfg.stage}: simulated transient failure {failures + 1}")
    assert (inputs["data"] / "rows.json").is_file(), "train got no prepared data"
    ckpt = make_checkpoint(out_dir / "checkpoint", seed=cfg.seed)
    (ckpt / "lineage.json").write_text(json.dumps({"stage": cfg.stage, "parent": str(inputs.get("checkpoint"))}))
    return {"checkpoint_dir": str(ckpt), "metrics": {"train/loss_m2t": cfg.loss, "train/loss_t2t": cfg.loss / 2}}


def fake_quantize(cfg: FakeTrainConfig, out_dir: Path, inputs: dict) -> dict:
    CALLS.append(("quantize", dict(inputs)))
    ckpt = make_checkpoint(out_dir / "quantized", seed=cfg.seed)
    return {"checkpoint_dir": str(ckpt), "metrics": {"quantize/bytes": 1.0}}


def fake_benchmark(cfg: FakeTrainConfig, out_dir: Path, inputs: dict) -> dict:
    CALLS.append(("benchmark", dict(inputs)))
    (out_dir / "table.csv").write_text("mode,tps\nspeedy,10\n")
    return {"metrics": {"bench/speedy/tps": 10.0, "bench/speedy/tpf": 2.0, "bench/quality/tps": 5.0,
                        "bench/quality/tpf": 1.2}}


def fake_evaluate(cfg: FakeEvalConfig, out_dir: Path, inputs: dict) -> dict:
    CALLS.append(("evaluate", dict(inputs)))
    assert (inputs["checkpoint"] / "config.json").is_file()
    (out_dir / "summary.json").write_text(json.dumps({"score": cfg.score}))
    # per task and the suite's aggregates, as components.evaluate.suite.run_eval reports them
    return {"metrics": {"eval/sum/accuracy": cfg.score, "eval/sum/tpf": 3.0, "eval/sum/tps": 40.0,
                        "eval/score": cfg.score, "eval/tpf": 3.0, "eval/tps": 40.0}}


def install_fakes(monkeypatch) -> None:
    """Point every stage of flows.stages.COMPONENTS at the stand-ins above."""
    from flows.stages import COMPONENTS

    fakes = {
        "data_prep": (FakeDataConfig, fake_prepare),
        "cpt": (FakeTrainConfig, fake_train),
        "sft": (FakeTrainConfig, fake_train),
        "rl": (FakeTrainConfig, fake_train),
        "quantize": (FakeTrainConfig, fake_quantize),
        "benchmark": (FakeTrainConfig, fake_benchmark),
        "evaluate": (FakeEvalConfig, fake_evaluate),
    }
    for name, (schema, entry) in fakes.items():
        monkeypatch.setitem(COMPONENTS, name, dataclasses.replace(COMPONENTS[name], schema=schema, entry=entry))
    CALLS.clear()


def write_pipeline(tmp_path: Path, tracking_uri: str, **stage_values) -> Path:
    """A pipeline YAML over stand-in stage configs in tmp_path; `stage_values[stage]` sets that stage's YAML."""
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    defaults = {
        "data_prep": {"size": 3},
        "cpt": {"stage": "cpt", "seed": 1},
        "sft": {"stage": "sft", "seed": 2},
        "rl": {"stage": "rl", "seed": 3},
        "quantize": {"stage": "quantize"},
        "benchmark": {"stage": "benchmark"},
        "evaluate": {"score": 0.5},
    }
    stages = {}
    for name, values in defaults.items():
        values = {**values, **stage_values.get(name, {})}
        path = conf / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        stages[name] = {"config": str(path)}
    pipeline = {
        "name": "test",
        "output_dir": str(tmp_path / "outputs"),
        "retries": 2,
        "retry_delay_seconds": 0,
        "tracking": {"uri": tracking_uri, "experiment": "test"},
        "stages": stages,
        "probe": {"enabled": False},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    return path
