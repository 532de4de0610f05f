"""Evaluate a model on tasks: render prompts, decode in batches, extract, score, aggregate.

The one way every stage scores a model (training, RL, quantization and the benchmark call
`evaluate_task` / `evaluate_suite`). Config problems, an empty task or a sandbox that cannot run
code fail *before* any generation. After that, one bad sample never stops the evaluation: a data
row without a needed value (`source.on_missing: fail_sample`), a prompt that does not fit, an
extractor or scorer that raises, a batch whose decoding fails -- each such sample is scored as
failed and its error is kept in its record.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import OmegaConf

from components.evaluate.config import TaskConfig, TaskConfigError
from components.evaluate.extractors import resolve_extractor
from components.evaluate.tasks import load_task, validate_task
from components.evaluate.metrics import AnswerAccuracy, MeanForwards, MeanLength, PassAtK, TokensPerForward
from components.evaluate.results import SUMMARY_FILE, TaskResult, save_task_result, write_json
from components.evaluate.prompts import render
from components.evaluate.scorers import SandboxUnavailableError, as_judgement, preflight, resolve_scorer, task_dir
from components.evaluate.sources import Sample, load_samples
from components.edits import EditStats, StructuralStats, judge_edits, judge_structural_edits
from components.families import Example, has_unique_answer

log = logging.getLogger(__name__)
TaskLike = TaskConfig | str | os.PathLike


@dataclasses.dataclass
class _Job:
    """One generation: a sample's prompt, decoded once (pass@k decodes each sample n times)."""

    sample: Sample
    sample_index: int
    prompt_text: str
    prompt_ids: Optional[list[int]]
    record: dict[str, Any]
    sequence: Optional[list[int]] = None  # generated token ids (EOS kept), for edit accounting
    trajectory: Any = None


def resolve_task(task: TaskLike, overrides: Sequence[str] = ()) -> TaskConfig:
    """A validated TaskConfig from a name, a path, or a TaskConfig (copied, never modified)."""
    if not isinstance(task, TaskConfig):
        return load_task(task, list(overrides))
    where = task.origin or f"task {task.name!r}"
    cfg = copy.deepcopy(task)
    if overrides:
        try:
            merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(list(overrides)))
            cfg = OmegaConf.to_object(merged)
        except Exception as exc:  # OmegaConf raises several error types, all naming the key
            raise TaskConfigError(f"{where}: overrides {list(overrides)}: {exc}") from exc
    return validate_task(cfg, where=where)


def build_decode_config(task: TaskConfig, preset: Optional[str] = None):
    """The task's decoding preset (or `preset`, a name in conf/decode/ that replaces it) with the task's
    overrides applied; an unknown preset or a bad value fails here with the known presets named."""
    return task.decode.load(preset)


def render_prompt(sample: Sample, task: TaskConfig, tokenizer) -> str:
    """The text the model sees: the template filled with the sample's fields, chat-wrapped if asked."""
    text = render(task.prompt.template, sample.fields)
    if not task.prompt.chat:
        return text
    messages = ([{"role": "system", "content": task.prompt.system}] if task.prompt.system else [])
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def _new_record(task: TaskConfig, sample: Sample, index: int, prompt: str) -> dict[str, Any]:
    return {
        "task": task.name, "id": sample.id, "sample_index": index, "prompt": prompt, "output": None,
        "extracted": None, "reference": sample.reference, "correct": False, "error": None, "detail": "",
        "tokens": 0, "forwards": 0, "edits": 0, "edit_fixes": 0, "edit_breaks": 0, "edit_neutral": 0,
        "edit_oscillations": 0,
    }


def _prepare_jobs(task: TaskConfig, samples: list[Sample], tokenizer, lm, decode) -> list[_Job]:
    from model.decoding import validate

    jobs = []
    for sample in samples:
        prompt_text, ids, error = "", None, None
        if sample.error is not None:  # a row without a needed value (source.on_missing: fail_sample)
            error = f"data: {sample.error}"
        else:
            try:
                prompt_text = render_prompt(sample, task, tokenizer)
                ids = tokenizer.encode(prompt_text)
                validate(lm, [ids], decode)  # the decoder's own checks, per prompt (length, mask id, ...)
            except Exception as exc:  # a bad sample is recorded, never fatal
                error, ids = f"prompt: {type(exc).__name__}: {exc}", None
        for i in range(task.samples_per_prompt):
            record = _new_record(task, sample, i, prompt_text)
            record["error"] = error
            jobs.append(_Job(sample, i, prompt_text, ids, record))
    return jobs


def _decode_text(tokenizer, ids: list[int], drop: set[int]) -> str:
    return tokenizer.decode([t for t in ids if t not in drop])


def _generate_batch(lm, jobs: list[_Job], decode, tokenizer, drop: set[int]) -> None:
    """Decode a batch; if the batch fails, decode its jobs one by one so only the culprit fails."""
    from model import generate

    try:
        res = generate(lm, [j.prompt_ids for j in jobs], decode)
    except Exception as exc:
        if len(jobs) == 1:
            jobs[0].record["error"] = f"generate: {type(exc).__name__}: {exc}"
            return
        for job in jobs:
            _generate_batch(lm, [job], decode, tokenizer, drop)
        return
    trajectories = res.trajectories or [None] * len(jobs)
    for job, seq, fwd, edits, traj in zip(jobs, res.sequences, res.forwards, res.edits, trajectories):
        job.record.update(output=_decode_text(tokenizer, seq, drop), tokens=len(seq), forwards=fwd, edits=edits)
        job.sequence, job.trajectory = seq, traj


def answer_ids(task: TaskConfig, sample: Sample, tokenizer) -> Optional[list[int]]:
    """The token ids wrong outputs' edits are judged against: the sample's reference answer when it is
    the one valid answer -- for every sample of a `unique_answer` task, and for the synthetic puzzles
    whose clues fix the answer (components.families.has_unique_answer) -- else None (shared with the
    benchmark)."""
    if sample.reference is None:
        return None
    if task.unique_answer or (isinstance(sample.data, Example) and has_unique_answer(sample.data)):
        return tokenizer.encode(sample.reference)
    return None


def _account_edits(job: _Job, task: TaskConfig, tokenizer, eos: Optional[int],
                   levenshtein: bool) -> tuple[EditStats, StructuralStats]:
    """Classify the job's T2T edits (components.edits.judge_edits) and, with Levenshtein decoding, its
    deletions and insertions (judge_structural_edits), and keep the counts in its record."""
    rec = job.record
    if job.trajectory is None:
        return EditStats(), StructuralStats()
    correct, reference = bool(rec["correct"]), answer_ids(task, job.sample, tokenizer)
    stats = judge_edits(job.trajectory, job.sequence, eos, correct=correct, reference=reference)
    rec.update(edit_fixes=stats.fixes, edit_breaks=stats.breaks, edit_neutral=stats.neutral,
               edit_oscillations=stats.oscillations)
    structural = StructuralStats()
    if levenshtein:
        structural = judge_structural_edits(job.trajectory, job.sequence, eos, correct=correct, reference=reference)
        rec.update(deletions=structural.deletions, insertions=structural.insertions)
    job.trajectory = None  # the record keeps the counts; drop the step lists
    return stats, structural


def _judge(job: _Job, task: TaskConfig, extractor, scorer) -> None:
    rec = job.record
    if rec["error"] is not None:
        return
    try:
        rec["extracted"] = extractor(rec["output"], job.sample)
    except Exception as exc:
        rec["error"] = f"extractor {task.extractor!r}: {type(exc).__name__}: {exc}"
        return
    try:
        verdict = as_judgement(scorer(rec["extracted"], job.sample, task), f"scorer {task.scorer!r}")
    except SandboxUnavailableError:
        raise
    except Exception as exc:
        rec["error"] = f"scorer {task.scorer!r}: {type(exc).__name__}: {exc}"
        return
    rec["correct"], rec["detail"] = verdict.correct, verdict.detail


def evaluate_task(
    lm,
    tokenizer,
    task_cfg: TaskLike,
    decode_cfg=None,
    limit: Optional[int] = None,
    batch_size: Optional[int] = None,
    *,
    preset: Optional[str] = None,
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike | None = None,
) -> TaskResult:
    """Evaluate `lm` on one task and return its TaskResult (also written under `output_dir`).

    `decode_cfg` (a DecodeConfig) replaces the task's preset entirely; `preset` picks the speedy or
    quality preset instead of the task's own; `limit` and `batch_size` override the task's.
    """
    start = time.perf_counter()
    task = resolve_task(task_cfg, overrides)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        task.limit = limit if task.limit is None else min(limit, task.limit)
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        task.batch_size = batch_size
    decode = decode_cfg if decode_cfg is not None else build_decode_config(task, preset)
    if decode.seed is None:
        decode = dataclasses.replace(decode, seed=task.seed)
    decode = dataclasses.replace(decode, record_trajectory=True)  # every edit is classified (fix/break)
    if task.samples_per_prompt > 1 and decode.temperature <= 0:
        raise TaskConfigError(
            f"task {task.name!r}: samples_per_prompt={task.samples_per_prompt} needs sampling, but the decoding "
            "temperature is 0 (greedy), so every sample would be identical; set decode.overrides.temperature > 0"
        )
    extractor, scorer = resolve_extractor(task.extractor, task_dir(task)), resolve_scorer(task)
    samples = load_samples(task)
    if task.limit is not None:
        samples = samples[: task.limit]
    sandbox = preflight(task)

    jobs = _prepare_jobs(task, samples, tokenizer, lm, decode)
    eos = decode.eos_id if decode.eos_id is not None else lm.config.eos_token_id
    mask = decode.mask_id if decode.mask_id is not None else lm.config.mask_token_id
    drop = {t for t in (eos, mask, getattr(tokenizer, "pad_id", None)) if t is not None}
    runnable = [j for j in jobs if j.prompt_ids is not None]
    gen_seconds = 0.0
    edit_stats, structural_stats = EditStats(), StructuralStats()
    with ThreadPoolExecutor(max_workers=task.sandbox.workers) as pool:
        for b, first in enumerate(range(0, len(runnable), task.batch_size)):
            batch = runnable[first:first + task.batch_size]
            t0 = time.perf_counter()
            with torch.no_grad():
                _generate_batch(lm, batch, dataclasses.replace(decode, seed=decode.seed + b), tokenizer, drop)
            gen_seconds += time.perf_counter() - t0
            list(pool.map(lambda j: _judge(j, task, extractor, scorer), batch))
            for job in batch:
                edits, structural = _account_edits(job, task, tokenizer, eos, decode.levenshtein)
                edit_stats, structural_stats = edit_stats + edits, structural_stats + structural
            log.info("%s: %d/%d generations", task.name, min(first + task.batch_size, len(runnable)), len(runnable))

    label = (preset or task.decode.preset) if decode_cfg is None else "custom"
    result = _aggregate(task, jobs, decode, label, time.perf_counter() - start, gen_seconds)
    result.sandbox = sandbox
    result.edits = edit_stats.as_dict()
    if decode.levenshtein:  # a decode that could delete or insert reports how those edits went, zeros included
        result.structural = dataclasses.asdict(structural_stats)
    if output_dir is not None:
        save_task_result(result, output_dir)
    return result


def _aggregate(task: TaskConfig, jobs: list[_Job], decode, preset: str, wall: float, gen_seconds: float) -> TaskResult:
    records = [j.record for j in jobs]
    generated = [r for r in records if r["output"] is not None]
    tpf, fwd, length = TokensPerForward(), MeanForwards(), MeanLength()
    if generated:
        tpf.update([r["tokens"] for r in generated], [r["forwards"] for r in generated])
        fwd.update([r["forwards"] for r in generated])
        length.update([r["tokens"] for r in generated])
    if task.metric == "accuracy":
        acc = AnswerAccuracy()
        acc.update([bool(r["correct"]) for r in records])
        scores = {"accuracy": float(acc.compute())}
        score = scores["accuracy"]
    else:
        per_problem: dict[str, list[bool]] = defaultdict(list)
        for r in records:
            per_problem[r["id"]].append(bool(r["correct"]))
        pak = PassAtK(task.k)
        pak.update([len(v) for v in per_problem.values()], [sum(v) for v in per_problem.values()])
        scores = {name: float(v) for name, v in pak.compute().items()}
        score = scores[f"pass@{min(task.k)}"]
    tokens = sum(r["tokens"] for r in generated)
    return TaskResult(
        task=task.name,
        metric=task.metric,
        score=score,
        scores=scores,
        tpf=float(tpf.compute()),
        mean_forwards=float(fwd.compute()),
        mean_length=float(length.compute()),
        tokens=tokens,
        forwards=sum(r["forwards"] for r in generated),
        num_problems=len({r["id"] for r in records}),
        num_generations=len(records),
        num_errors=sum(r["error"] is not None for r in records),
        wall_seconds=wall,
        generation_seconds=gen_seconds,
        tokens_per_second=tokens / gen_seconds if gen_seconds > 0 else float("nan"),
        preset=preset,
        decode=dataclasses.asdict(decode),
        records=records,
    )


def evaluate_suite(
    lm,
    tokenizer,
    tasks: Sequence[TaskLike],
    *,
    decode_cfg=None,
    preset: Optional[str] = None,
    limit: Optional[int] = None,
    batch_size: Optional[int] = None,
    task_overrides: Sequence[str] = (),
    output_dir: str | os.PathLike | None = None,
) -> list[TaskResult]:
    """Evaluate several tasks; every task config is loaded and validated before the first decodes.
    With `output_dir`, each task's files go to `<output_dir>/<task>/` and a `summary.json` lists all."""
    if not tasks:
        raise TaskConfigError("the evaluation suite has no tasks")
    configs = [resolve_task(t, task_overrides) for t in tasks]
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TaskConfigError(f"the suite lists task name(s) {dupes} more than once; their results would collide")
    for cfg in configs:  # a bad preset, missing data or a broken sandbox fails before any task decodes
        if decode_cfg is None:
            build_decode_config(cfg, preset)
        load_samples(cfg)
        preflight(cfg)
    results = [
        evaluate_task(lm, tokenizer, cfg, decode_cfg, limit, batch_size, preset=preset, output_dir=output_dir)
        for cfg in configs
    ]
    if output_dir is not None:
        write_json(Path(output_dir) / SUMMARY_FILE, [r.summary() for r in results])
    return results
