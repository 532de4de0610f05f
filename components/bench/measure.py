"""Timing one plan of the throughput benchmark: warm-up, repeated passes, medians, edit accounting.

A plan is one setting or baseline, fully resolved (runner.make_plans builds them). Timings cover
the whole decode of a batch, prefill included, with queued GPU work waited for.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from components.edits import EditStats, judge_edits

from .baselines import reference_generate
from .config import BenchmarkError
from .memory import PeakMemory, model_bytes
from .prompts import PromptSet

# Per-setting edit accounting (EditStats.named); None where there was nothing to judge against.
EDIT_KEYS = tuple(EditStats().named())


@dataclass
class Plan:
    """One thing to measure: a setting or a baseline, fully resolved."""

    name: str
    kind: str  # "setting" | "reference" | "autoregressive"
    preset: str
    batch_size: int
    quant: str
    decode: Any  # model.DecodeConfig
    indices: list[int]  # which prompts


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (no-op on CPU)."""
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
                sync_device(self.device)
                start = time.perf_counter()
                res = self._guard(lambda: _decode_chunk(self.lm, self.plan, [self.ids[i] for i in chunk]))
                sync_device(self.device)
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
            "name": plan.name, "kind": plan.kind, "preset": plan.preset, "batch_size": plan.batch_size,
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


def measure_interleaved(plans: list[Plan], model_for: Callable[[str], Any], prompts: PromptSet,
                        repeats: dict[str, int], warmup: int, device: torch.device) -> list[dict]:
    """Time several plans round-robin: pass r of every plan before pass r+1 of any.

    `model_for(quant)` gives the model each plan runs on (all quantized copies stay loaded)."""
    ms = [Measurement(p, model_for(p.quant), prompts, device) for p in plans]
    for m in ms:
        m.warm(warmup)
    for r in range(max(repeats.values())):
        for m in ms:
            if r < repeats[m.plan.name]:
                m.one_pass()
    for m in ms:
        m.account_edits()
    return [m.record() for m in ms]
