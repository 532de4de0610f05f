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
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from components.config import save_config, to_container
from components.edits import EditStats, judge_edits
from model.files import atomic_write, atomic_writer

from .baselines import autoregressive_config, reference_generate
from .config import BenchConfig, BenchmarkError, SettingConfig
from .machine import describe_machine
from .memory import PeakMemory, available_bytes, estimate_decode_bytes, model_bytes
from .prompts import PromptSet, load_prompt_set
from .report import add_comparisons, write_reports

RESULTS_FILE = "results.jsonl"
# Per-setting edit accounting (EditStats.named); None where there was nothing to judge against.
EDIT_KEYS = tuple(EditStats().named())
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Plan:
    """One thing to measure: a setting or a baseline, fully resolved."""

    name: str
    kind: str  # "setting" | "reference" | "autoregressive"
    mode: str
    batch_size: int
    quant: str
    decode: Any  # model.DecodeConfig
    indices: list[int]  # which prompts


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


def _decode_for(mode: str, overrides: dict[str, Any], where: str):
    from components.presets import load_decode_config

    try:
        return load_decode_config(mode, overrides=overrides)
    except (ValueError, TypeError) as exc:
        raise BenchmarkError(f"{where}: {exc}") from exc


def make_plans(cfg: BenchConfig, prompts: PromptSet) -> list[Plan]:
    """Settings first, then the autoregressive baseline, then the (slow) reference loop."""
    common = {**prompts.decode_overrides, **cfg.decode}
    everyone = list(range(len(prompts.ids)))
    plans = []
    for i, s in enumerate(cfg.settings):
        decode = _decode_for(s.mode, {**common, **s.decode}, f"bench.settings[{i}] ({s.label})")
        decode = dataclasses.replace(decode, max_batch_size=s.batch_size, use_cache=True)
        plans.append(Plan(s.label, "setting", s.mode, s.batch_size, s.quant, decode, everyone))
    b = cfg.baselines
    subset = everyone[: b.max_prompts] if b.max_prompts else everyone
    if b.autoregressive or b.reference:
        base = _decode_for(b.mode, common, "bench.baselines.mode")
        if b.autoregressive:
            plans.append(Plan("autoregressive", "autoregressive", b.mode, 1, "none",
                              dataclasses.replace(autoregressive_config(base), max_batch_size=1), subset))
        if b.reference:
            plans.append(Plan("reference", "reference", b.mode, 1, "none",
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


# ---------------------------------------------------------------------------------------- measuring
def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_chunk(lm, plan: Plan, ids: list[list[int]]):
    from model import generate

    if plan.kind == "reference":
        return reference_generate(lm, ids[0], plan.decode)  # chunks of one prompt
    return generate(lm, ids, plan.decode)


def _load_average() -> Optional[float]:
    """1-minute load average (other processes competing for the CPU), None where unknown."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate" in text or "not enough memory" in text or isinstance(exc, MemoryError))


class Measurement:
    """Timing state of one plan: warm-up, then full passes over its prompts in batches.

    Passes of several plans may be interleaved (`bench.interleave`), so that a change in the load
    other processes put on the machine hits every setting alike instead of whichever ran then.
    """

    def __init__(self, plan: Plan, lm, prompts: PromptSet, device: torch.device):
        self.plan, self.lm, self.prompts, self.device = plan, lm, prompts, device
        self.ids = [prompts.ids[i] for i in plan.indices]
        size = 1 if plan.kind == "reference" else plan.batch_size
        self.chunks = [list(range(i, min(i + size, len(self.ids)))) for i in range(0, len(self.ids), size)]
        self.latencies: list[list[float]] = [[] for _ in self.ids]
        self.walls: list[float] = []
        self.first: Optional[dict] = None
        self.deterministic = True
        self.warmups = 0
        self.peak_bytes = self.start_bytes = 0
        self.loads: list[Optional[float]] = []
        self.edit_stats: Optional[EditStats] = None

    def _guard(self, fn):
        try:
            return fn()
        except Exception as exc:
            if _is_oom(exc):
                raise BenchmarkError(f"setting {self.plan.name} (batch_size {self.plan.batch_size}) ran out of "
                                     f"memory: {str(exc).splitlines()[0]}; lower its batch_size") from exc
            raise

    def warm(self, n: int) -> None:
        for _ in range(n):
            self._guard(lambda: _decode_chunk(self.lm, self.plan, [self.ids[i] for i in self.chunks[0]]))
            self.warmups += 1

    def one_pass(self) -> None:
        self.loads.append(_load_average())
        with PeakMemory(self.device) as mem:
            sequences, forwards, edits, calls, total = [], [], [], 0, 0.0
            for chunk in self.chunks:
                _sync(self.device)
                start = time.perf_counter()
                res = self._guard(lambda: _decode_chunk(self.lm, self.plan, [self.ids[i] for i in chunk]))
                _sync(self.device)
                wall = time.perf_counter() - start
                total += wall
                for i in chunk:
                    self.latencies[i].append(wall)
                sequences += res.sequences
                forwards += res.forwards
                edits += res.edits
                calls += res.forward_calls
        self.walls.append(total)
        if self.first is None:
            self.first = {"sequences": sequences, "forwards": forwards, "edits": edits, "calls": calls}
            self.start_bytes = mem.start_bytes
        elif sequences != self.first["sequences"]:
            self.deterministic = False
        self.peak_bytes = max(self.peak_bytes, mem.peak_bytes)

    def account_edits(self) -> None:
        """One untimed pass with the trajectory recorded, every edit classified against the prompts'
        answers (a setting on a task's prompts only: random prompts have nothing to judge against)."""
        if self.plan.kind != "setting" or self.prompts.judges is None:
            return
        plan = dataclasses.replace(self.plan, decode=dataclasses.replace(self.plan.decode, record_trajectory=True))
        eos = plan.decode.eos_id if plan.decode.eos_id is not None else self.lm.config.eos_token_id
        stats = EditStats()
        for chunk in self.chunks:
            res = self._guard(lambda: _decode_chunk(self.lm, plan, [self.ids[i] for i in chunk]))
            for i, seq, trajectory in zip(chunk, res.sequences, res.trajectories):
                p = plan.indices[i]
                stats = stats + judge_edits(trajectory, seq, eos, correct=bool(self.prompts.judges[p](seq)),
                                            reference=self.prompts.references[p])
        self.edit_stats = stats

    def record(self) -> dict:
        plan, first, walls = self.plan, self.first, self.walls
        tokens = sum(len(s) for s in first["sequences"])
        wall = statistics.median(walls)
        per_request = [statistics.median(lat) for lat in self.latencies]
        total_forwards = sum(first["forwards"])
        loads = [x for x in self.loads + [_load_average()] if x is not None]
        return {
            "name": plan.name, "kind": plan.kind, "mode": plan.mode, "batch_size": plan.batch_size,
            "quant": plan.quant, "num_prompts": len(self.ids), "tokens": tokens, "forwards": total_forwards,
            "network_calls": first["calls"], "edits": sum(first["edits"]),
            "tpf": tokens / total_forwards if total_forwards else 0.0,
            "tps": tokens / wall if wall > 0 else float("inf"), "wall_s": wall, "wall_s_all": walls,
            # Under contention from other processes the fastest repeat is the least disturbed one.
            "tps_best": tokens / min(walls) if min(walls) > 0 else float("inf"),
            "load_average_max": max(loads) if loads else None,
            "latency_p50_s": _percentile(per_request, 0.5), "latency_p95_s": _percentile(per_request, 0.95),
            "peak_mem_mb": self.peak_bytes / 2**20, "peak_mem_delta_mb": (self.peak_bytes - self.start_bytes) / 2**20,
            "model_mb": model_bytes(self.lm) / 2**20, "score": self.prompts.score(first["sequences"], plan.indices),
            "deterministic": self.deterministic, "repeats": len(walls), "warmup": self.warmups,
            "decode": dataclasses.asdict(plan.decode), "prompt_indices": plan.indices,
            "sequences": first["sequences"],
            **(self.edit_stats.named() if self.edit_stats is not None else dict.fromkeys(EDIT_KEYS)),
        }


def measure(plan: Plan, lm, prompts: PromptSet, repeats: int, warmup: int, device: torch.device) -> dict:
    """Time one plan on its own: warm-up, then `repeats` passes; medians in the record."""
    m = Measurement(plan, lm, prompts, device)
    m.warm(warmup)
    for _ in range(repeats):
        m.one_pass()
    m.account_edits()
    return m.record()


def measure_interleaved(plans: list[Plan], models: "_Models", prompts: PromptSet, repeats: dict[str, int],
                        warmup: int, device: torch.device) -> list[dict]:
    """Time several plans round-robin: pass r of every plan before pass r+1 of any."""
    ms = [Measurement(p, models.get(p.quant), prompts, device) for p in plans]
    for m in ms:
        m.warm(warmup)
    for r in range(max(repeats.values())):
        for m in ms:
            if r < repeats[m.plan.name]:
                m.one_pass()
    for m in ms:
        m.account_edits()
    return [m.record() for m in ms]


# ---------------------------------------------------------------------------------------- results file
def _fingerprint(plan: Plan, model_fp: str, prompts: PromptSet, cfg: BenchConfig, device: torch.device) -> str:
    data = {"plan": [plan.name, plan.kind, plan.batch_size, plan.quant, dataclasses.asdict(plan.decode), plan.indices],
            "model": model_fp, "prompts": prompts.fingerprint(), "repeats": cfg.repeats, "device": str(device),
            "dtype": cfg.dtype, "threads": cfg.threads, "fp8": list(cfg.fp8_block_size),
            "skip": list(cfg.quant_skip_modules)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class ResultStore:
    """`results.jsonl`, one completed setting per line, rewritten atomically on every append."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.records: list[dict] = []
        if resume and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a torn last line cannot happen with atomic writes; stop at anything odd

    def find(self, fingerprint: str) -> Optional[dict]:
        return next((r for r in self.records if r.get("fingerprint") == fingerprint), None)

    def keep_only(self, fingerprints: set[str]) -> None:
        """Drop records of settings that are no longer planned (or whose inputs changed)."""
        self.records = [r for r in self.records if r.get("fingerprint") in fingerprints]
        self._write()

    def append(self, record: dict) -> None:
        self.records.append(record)
        self._write()

    def _write(self) -> None:
        with atomic_writer(self.path, fsync=True) as fh:
            for r in self.records:
                fh.write(json.dumps(r) + "\n")


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
        if alias:  # stable per-mode names (`bench/speedy/tps`) for comparisons across runs
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
        prompts = load_prompt_set(cfg.prompts, model_dir, lm.config.vocab_size, lm.config.mask_token_id)
        plans = make_plans(cfg, prompts)
        _check_plans(plans, lm, prompts, cfg, device)

        out_dir.mkdir(parents=True, exist_ok=True)
        machine = describe_machine(device)
        atomic_write(out_dir / "machine.json", json.dumps(machine, indent=2) + "\n")
        save_config(cfg, out_dir / "bench_config.yaml")
        model_fp = _model_fingerprint(model_dir)
        fingerprints = {p.name: _fingerprint(p, model_fp, prompts, cfg, device) for p in plans}
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
            for plan, record in zip(pending, measure_interleaved(pending, models, prompts, repeats, cfg.warmup,
                                                                 device)):
                save(plan, record)
        aliased: set[str] = set()
        for plan in plans:
            record = store.find(fingerprints[plan.name])
            if record is None:
                record = measure(plan, models.get(plan.quant), prompts, repeats[plan.name], cfg.warmup, device)
                save(plan, record)
            alias = None
            if plan.kind == "setting" and plan.quant == "none" and plan.mode not in aliased:
                alias = plan.mode
                aliased.add(plan.mode)
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
