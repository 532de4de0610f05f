"""The benchmark's prompt set: a task config's samples (scored with the evaluation stage's
extractor and scorer), or random token ids for speed figures on untrained models (no score)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .config import BenchmarkError, PromptSetConfig


@dataclass
class PromptSet:
    ids: list[list[int]]
    texts: list[Optional[str]]
    task_name: Optional[str] = None
    decode_overrides: dict[str, Any] = field(default_factory=dict)  # the task's own (e.g. gen_length)
    # judge(output_ids) -> bool per prompt index; None when the prompts carry no answers.
    judges: Optional[list[Callable[[list[int]], bool]]] = None
    # Per prompt index, the answer's token ids that edits of a wrong output are judged against
    # (components.evaluate.runner.answer_ids: tasks with a unique answer only, else None).
    references: Optional[list[Optional[list[int]]]] = None

    def fingerprint(self) -> str:
        """Changes with the prompts and with what their outputs' edits are judged against."""
        return hashlib.sha256(json.dumps([self.ids, self.references]).encode()).hexdigest()[:16]

    def score(self, sequences: list[list[int]], indices: Optional[list[int]] = None) -> Optional[float]:
        """Fraction of outputs judged correct (prompt `indices[i]` produced `sequences[i]`)."""
        if self.judges is None:
            return None
        indices = list(range(len(sequences))) if indices is None else indices
        return sum(bool(self.judges[i](seq)) for i, seq in zip(indices, sequences)) / max(1, len(sequences))


def _tokenizer(cfg: PromptSetConfig, model_dir: Path):
    from model.tokenizer import load_tokenizer

    folder = Path(cfg.tokenizer) if cfg.tokenizer else model_dir
    if not (folder / "tokenizer.json").is_file():
        raise BenchmarkError(
            f"bench.prompts.task={cfg.task!r} needs a tokenizer, but {folder} has no tokenizer.json; set "
            f"prompts.tokenizer to a folder that has one, or prompts.task=null for random-token prompts (no score)")
    return load_tokenizer(folder)


def _judge(task, sample, tokenizer, extractor, scorer, drop: set[int]) -> Callable[[list[int]], bool]:
    def judge(output_ids: list[int]) -> bool:
        # One bad output is a wrong answer, never a crashed benchmark (as in the evaluation stage).
        try:
            text = tokenizer.decode([t for t in output_ids if t not in drop])
            verdict = scorer(extractor(text, sample), sample, task)
            return bool(getattr(verdict, "correct", verdict))
        except Exception:
            return False

    return judge


def load_prompt_set(cfg: PromptSetConfig, model_dir: Path, vocab_size: int, mask_id: Optional[int]) -> PromptSet:
    """Build the prompts before any model runs (config errors surface here)."""
    if cfg.task is None:
        g = torch.Generator().manual_seed(cfg.seed)
        allowed = torch.tensor([t for t in range(vocab_size) if t != mask_id])
        lengths = torch.randint(cfg.random_min_length, cfg.random_max_length + 1, (cfg.num_prompts,), generator=g)
        ids = [allowed[torch.randint(0, len(allowed), (int(n),), generator=g)].tolist() for n in lengths]
        return PromptSet(ids=ids, texts=[None] * len(ids))

    from components.evaluate import load_samples, load_task, render_prompt
    from components.evaluate.extractors import resolve_extractor
    from components.evaluate.runner import answer_ids
    from components.evaluate.scorers import preflight, resolve_scorer, task_dir

    task = load_task(cfg.task, list(cfg.task_overrides))
    preflight(task)  # e.g. a sandbox that cannot run code fails now, not after the timing
    tokenizer = _tokenizer(cfg, model_dir)
    if tokenizer.vocab_size > vocab_size:
        raise BenchmarkError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size}; "
                             f"bench.prompts.tokenizer does not belong to this model")
    samples = load_samples(task)[: cfg.num_prompts]
    extractor, scorer = resolve_extractor(task.extractor, task_dir(task)), resolve_scorer(task)
    drop = {t for t in (tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id) if t is not None}
    texts = [render_prompt(s, task, tokenizer) for s in samples]
    ids = [tokenizer.encode(t) for t in texts]
    empty = [i for i, p in enumerate(ids) if not p]
    if empty:
        raise BenchmarkError(f"task {task.name!r}: prompts {empty[:5]} encode to no tokens")
    judges = [_judge(task, s, tokenizer, extractor, scorer, drop) for s in samples]
    overrides = dict(task.decode.overrides) if cfg.use_task_decode else {}
    references = [answer_ids(task, s, tokenizer) for s in samples]
    return PromptSet(ids=ids, texts=texts, task_name=task.name, decode_overrides=overrides, judges=judges,
                     references=references)
