"""The throughput benchmark: one model folder, one prompt set, several decoding settings, two baselines.

For every setting (decoding preset, batch size, quantization) it measures, with warm-up runs excluded
and medians over repeated runs: TPS (generated tokens / wall seconds of the whole decode, prefill
included), TPF, forwards, network calls, latency p50/p95 per request (a request's latency is the
wall time of the batch it was decoded in), peak memory, and the score on the prompts' task. Beside
them, on the same weights: the reference-style loop and the autoregressive-equivalent (design §9).
On a task's prompts, each setting also gets one extra untimed pass with the trajectory recorded (it
would slow the timed ones), whose every T2T edit is classified fix / break / neutral / oscillation
(components.edits, judged as the evaluation judges them).

Each completed setting is appended atomically to `results.jsonl` in the output folder, so an
interrupted benchmark keeps what it finished and, run again, resumes after it (settings are matched
by a fingerprint of model, prompts and decoding settings). Everything that can be checked without
running the model -- settings, prompts, memory -- is checked before the first measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from components.config import save_config, to_container
from components.presets import DecodeChoice
from model import fill_special_ids
from model.files import atomic_write
from model.tokenizer import TOKENIZER_FILE, load_tokenizer

from .baselines import autoregressive_config
from .config import BenchConfig, BenchmarkError
from .machine import describe_machine
from .measure import EDIT_KEYS, Plan, measure, measure_interleaved
from .memory import available_bytes, estimate_decode_bytes, model_bytes
from .prompts import PromptSet, load_prompt_set
from .report import add_comparisons, write_reports
from .store import ResultStore, model_fingerprint, plan_fingerprint

RESULTS_FILE = "results.jsonl"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------- planning
def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("bench.device=cuda but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise BenchmarkError(f"model folder {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise BenchmarkError(f"{model_dir} is not a model checkpoint folder: it has no config.json")
    if not any(model_dir.glob("*.safetensors")):
        raise BenchmarkError(f"{model_dir} is not a model checkpoint folder: it has no *.safetensors weights")


def _decode_for(choice: DecodeChoice, overrides: dict[str, Any], where: str):
    try:
        return choice.load(overrides=overrides)
    except (ValueError, TypeError) as exc:
        raise BenchmarkError(f"{where}: {exc}") from exc


def make_plans(cfg: BenchConfig, prompts: PromptSet) -> list[Plan]:
    """Settings first, then the autoregressive baseline, then the (slow) reference loop."""
    common = {**prompts.decode_overrides, **cfg.decode_overrides}
    everyone = list(range(len(prompts.ids)))
    plans = []
    for i, s in enumerate(cfg.settings):
        decode = _decode_for(s.decode, common, f"bench.settings[{i}] ({s.label})")
        decode = dataclasses.replace(decode, max_batch_size=s.batch_size, use_cache=True)
        plans.append(Plan(s.label, "setting", s.decode.preset, s.batch_size, s.quant, decode, everyone))
    b = cfg.baselines
    subset = everyone[: b.max_prompts] if b.max_prompts else everyone
    if b.autoregressive or b.reference:
        base = _decode_for(DecodeChoice(b.preset, {}), common, "bench.baselines.preset")
        if b.autoregressive:
            plans.append(Plan("autoregressive", "autoregressive", b.preset, 1, "none",
                              dataclasses.replace(autoregressive_config(base), max_batch_size=1), subset))
        if b.reference:
            plans.append(Plan("reference", "reference", b.preset, 1, "none",
                              dataclasses.replace(base, use_cache=False, max_batch_size=1, speculative_verify=False,
                                                  mbe_window=0, temperature=0.0), subset))
    return plans


def _check_plans(plans: list[Plan], lm, prompts: PromptSet, cfg: BenchConfig, device: torch.device) -> None:
    """Decoder validation and the memory estimate of every plan, before anything is timed."""
    from model.decoding import validate

    limit = (cfg.memory_limit_mb * 2**20) if cfg.memory_limit_mb else available_bytes(device)
    weights = model_bytes(lm)
    # Quantized copies live beside the loaded model: one at a time, or all of them when interleaving.
    copies = len({p.quant for p in plans} - {"none"}) if cfg.interleave else 1
    for plan in plans:
        ids = [prompts.ids[i] for i in plan.indices]
        try:
            validate(lm, ids, plan.decode)
        except ValueError as exc:
            raise BenchmarkError(f"setting {plan.name}: {exc}") from exc
        if plan.quant == "int8_dynamic_fbgemm" and device.type != "cpu":
            raise BenchmarkError(f"setting {plan.name}: quant int8_dynamic_fbgemm runs on CPU only")
        if plan.quant == "int8_dynamic_fbgemm" and lm.dtype != torch.float32:
            raise BenchmarkError(f"setting {plan.name}: quant int8_dynamic_fbgemm needs bench.dtype=float32")
        B = plan.decode.block_length
        canvas = max(-(-(len(p) + plan.decode.gen_length) // B) * B for p in ids)
        batch = min(plan.batch_size, len(ids))
        need = weights * (1 + (copies if plan.quant != "none" else 0)) + estimate_decode_bytes(
            lm, batch, canvas, B, cached=plan.kind != "reference")
        if need > limit:
            raise BenchmarkError(
                f"setting {plan.name} (batch_size {plan.batch_size}, canvas {canvas} tokens) needs about "
                f"{need / 2**20:.0f} MiB but only {limit / 2**20:.0f} MiB are "
                f"{'allowed (bench.memory_limit_mb)' if cfg.memory_limit_mb else 'available'}; "
                f"lower its batch_size or gen_length")


# ---------------------------------------------------------------------------------------- models
class _Models:
    """The loaded model and its quantized copies (one at a time unless interleaving needs them all)."""

    def __init__(self, base, cfg: BenchConfig, keep_all: bool = False):
        self.base, self.cfg, self.keep_all = base, cfg, keep_all
        self.copies: dict[str, Any] = {}

    def get(self, quant: str):
        from components.quantize import apply_int8, round_to_fp8

        if quant == "none":
            return self.base
        if quant in self.copies:
            return self.copies[quant]
        if not self.keep_all:
            self.copies.clear()  # free the previous copy first
        lm = copy.deepcopy(self.base)
        if quant == "fp8":
            round_to_fp8(lm, self.cfg.fp8_block_size, self.cfg.quant_skip_modules)
        else:
            apply_int8(lm, quant, self.cfg.quant_skip_modules)
        self.copies[quant] = lm.eval()
        return self.copies[quant]


# ---------------------------------------------------------------------------------------- MLflow
class _Tracker:
    """Logs to an MLflow run when one is given (a Run, an ActiveRun or a run id); a no-op otherwise."""

    def __init__(self, run, client=None):
        self.run_id = None if run is None else (run if isinstance(run, str) else run.info.run_id)
        self.client = client
        if self.run_id is not None and self.client is None:
            import mlflow

            self.client = mlflow.MlflowClient()

    def metrics(self, record: dict, alias: Optional[str] = None) -> None:
        if self.run_id is None:
            return
        from components.tracking.runs import log_metrics

        keys = ("tps", "tpf", "forwards", "latency_p50_s", "latency_p95_s", "peak_mem_mb", "score",
                "agreement_with_unquantized", "x_reference", "x_autoregressive", "x_unquantized",
                "score_minus_unquantized", *EDIT_KEYS)
        values = {f"bench/{record['name']}/{k}": record[k] for k in keys if record.get(k) is not None}
        if alias:  # stable per-preset names (`bench/speedy/tps`) for comparisons across runs
            values.update({f"bench/{alias}/{k}": record[k] for k in ("tps", "tpf", "score", *EDIT_KEYS)
                           if record.get(k) is not None})
        log_metrics(self.client, self.run_id, values)

    def artifacts(self, paths: list[Path]) -> None:
        if self.run_id is None:
            return
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), artifact_path="bench")


# ---------------------------------------------------------------------------------------- entry point
def run_benchmark(cfg: BenchConfig, model_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  run=None, client=None) -> dict:
    """Measure every setting of `cfg` on the model in `model_dir`; write results into `out_dir`.

    `run` (optional): an MLflow run (object or id) that receives the metrics, the tables and the plot.
    Returns {"records": [...], "machine": {...}, "files": {...}} (records without token sequences).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_model_dir(model_dir)
    device = _resolve_device(cfg.device)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        from components.quantize import load_model

        lm = load_model(model_dir, dtype=_DTYPES[cfg.dtype] if cfg.dtype else None, device=device)
        if (model_dir / TOKENIZER_FILE).is_file():  # a released config.json names no mask id; its tokenizer does
            fill_special_ids(lm.config, load_tokenizer(model_dir))
        prompts = load_prompt_set(cfg.prompts, model_dir, lm.config.vocab_size, lm.config.mask_token_id)
        plans = make_plans(cfg, prompts)
        _check_plans(plans, lm, prompts, cfg, device)

        out_dir.mkdir(parents=True, exist_ok=True)
        machine = describe_machine(device)
        atomic_write(out_dir / "machine.json", json.dumps(machine, indent=2) + "\n")
        save_config(cfg, out_dir / "bench_config.yaml")
        model_fp = model_fingerprint(model_dir)
        fingerprints = {p.name: plan_fingerprint(p, model_fp, prompts, cfg, device) for p in plans}
        store = ResultStore(out_dir / RESULTS_FILE, resume=cfg.resume)
        store.keep_only(set(fingerprints.values()))
        tracker = _Tracker(run, client)
        models = _Models(lm, cfg, keep_all=cfg.interleave)
        repeats = {p.name: cfg.repeats if p.kind == "setting" else (cfg.baselines.repeats or cfg.repeats)
                   for p in plans}

        def save(plan: Plan, record: dict) -> None:
            record.update(fingerprint=fingerprints[plan.name], task=prompts.task_name,
                          model_dir=str(model_dir), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            store.append(record)

        pending = [p for p in plans if store.find(fingerprints[p.name]) is None]
        if cfg.interleave and len(pending) > 1:
            for plan, record in zip(pending, measure_interleaved(pending, models.get, prompts, repeats, cfg.warmup,
                                                                 device)):
                save(plan, record)
        aliased: set[str] = set()
        for plan in plans:
            record = store.find(fingerprints[plan.name])
            if record is None:
                record = measure(plan, models.get(plan.quant), prompts, repeats[plan.name], cfg.warmup, device)
                save(plan, record)
            alias = None
            if plan.kind == "setting" and plan.quant == "none" and plan.preset not in aliased:
                alias = plan.preset
                aliased.add(plan.preset)
            tracker.metrics(record, alias)
        records = add_comparisons([store.find(fingerprints[p.name]) for p in plans])
        files = write_reports(records, out_dir, machine, task=prompts.task_name)
        for record in records:  # the comparisons exist only once every setting is done
            tracker.metrics({k: record.get(k) for k in ("name", "agreement_with_unquantized", "x_reference",
                                                        "x_autoregressive", "x_unquantized",
                                                        "score_minus_unquantized")})
        tracker.artifacts([out_dir / RESULTS_FILE, out_dir / "machine.json", out_dir / "bench_config.yaml",
                           *files.values()])
    finally:
        torch.set_num_threads(previous_threads)
    slim = [{k: v for k, v in r.items() if k not in ("sequences", "decode", "prompt_indices")} for r in records]
    return {"records": slim, "machine": machine, "files": {k: str(v) for k, v in files.items()},
            "config": to_container(cfg)}
