"""Prompts, rollouts from the draft-and-edit decoder, and their rewards.

A rollout batch is G sampled responses for each of its prompts (groups are consecutive). For the
likelihood estimate a response is the decoder's canvas from the end of the prompt to the end of the
block holding the last returned token: the decoder produced every token of those blocks (those
after EOS too), and under the block-causal mask the blocks after it cannot change their
likelihood, so truncating there is exact.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from components.edits import EditStats, StructuralStats, judge_example_edits, judge_example_structural_edits
from components.families import Example, get_family
from model import DecodeConfig, GenerationResult, generate
from model.decoding import Trajectory

from .config import PromptsConfig, RolloutConfig
from .rewards import CombinedReward, Completion, Scored

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- prompts


def _read_jsonl(path: str, what: str) -> list[Example]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"rl.prompts.{what}: no such file {file}")
    out = []
    for i, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}:{i + 1}: not valid JSON: {exc}") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise ValueError(f"{file}:{i + 1}: each record needs a string 'prompt'")
        meta = rec.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{file}:{i + 1}: 'meta' must be an object")
        answer = rec.get("answer")
        out.append(Example(str(rec.get("id", f"{file.stem}-{i}")), str(rec.get("family", "jsonl")), rec["prompt"],
                           "" if answer is None else str(answer), meta))
    if not out:
        raise ValueError(f"rl.prompts.{what}: {file} holds no records")
    return out


def load_prompts(cfg: PromptsConfig) -> tuple[list[Example], list[Example]]:
    """(train prompts for rollouts, held-out prompts for evaluation)."""
    if cfg.source == "synthetic":
        family = get_family(cfg.family, **cfg.params)
        train = family.make("train", cfg.train_size, cfg.seed)
        held = family.make(cfg.eval_split, cfg.eval_size, cfg.seed + 1) if cfg.eval_size else []
        return train, held
    if cfg.source == "jsonl":
        train = _read_jsonl(cfg.train_path, "train_path")[: cfg.train_size]
        held = _read_jsonl(cfg.eval_path, "eval_path")[: cfg.eval_size] if cfg.eval_path and cfg.eval_size else []
        return train, held
    raise ValueError(f"rl.prompts.source must be 'synthetic' or 'jsonl', got {cfg.source!r}")


def encode_prompt(tokenizer, text: str, template: str) -> list[int]:
    """Token ids the decoder continues: the SFT chat format (user turn, assistant marker) or raw text."""
    if template == "chat":
        return tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                              add_generation_prompt=True))
    if template == "raw":
        return tokenizer.encode(text)
    raise ValueError(f"rl.prompts.template must be 'chat' or 'raw', got {template!r}")


def decode_config(cfg: RolloutConfig, tokenizer, *, temperature: float, seed: int | None,
                  max_batch_size: int | None = None) -> DecodeConfig:
    """The rollout's preset (S = speedy, Q = quality) with its overrides, and the rollouts' own sampling."""
    return cfg.decode.load(gen_length=cfg.gen_length, temperature=temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                           eos_early_stop=cfg.eos_early_stop, seed=seed, eos_id=tokenizer.eos_id,
                           mask_id=tokenizer.mask_id,
                           max_batch_size=max_batch_size if max_batch_size is not None else cfg.max_batch_size)


# ---------------------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    example: Example
    prompt_ids: list[int]
    response_ids: list[int]  # decoded canvas to the end of the last returned token's block
    sequence: list[int]  # what `generate` returned (cut after EOS)
    completion: Completion
    forwards: int
    score: Scored | None = None
    trajectory: Trajectory | None = None  # when the decode recorded it (evaluation)


@dataclass
class RolloutBatch:
    rollouts: list[Rollout]
    group_size: int
    tokens_per_forward: float
    wall_seconds: float
    rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (S,)
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (S,) float 0/1
    errors: list[str] = field(default_factory=list)

    @property
    def mean_length(self) -> float:
        return sum(len(r.sequence) for r in self.rollouts) / max(1, len(self.rollouts))

    @property
    def finished_fraction(self) -> float:
        return sum(r.completion.finished for r in self.rollouts) / max(1, len(self.rollouts))


def response_region(canvas: list[int], prompt_length: int, sequence: list[int], block_length: int) -> list[int]:
    """canvas[P : end of the block holding the last returned token]."""
    last = prompt_length + len(sequence) - 1
    end = (last // block_length + 1) * block_length
    return list(canvas[prompt_length:min(end, len(canvas))])


def make_completion(tokenizer, sequence: list[int]) -> Completion:
    finished = bool(sequence) and sequence[-1] == tokenizer.eos_id
    body = sequence[:-1] if finished else sequence
    return Completion(tokenizer.decode(body, skip_special_tokens=True), tuple(sequence), finished)


def generate_rollouts(lm, tokenizer, examples: list[Example], group_size: int, dcfg: DecodeConfig,
                      template: str) -> RolloutBatch:
    """G responses per example (consecutive per group), cut at EOS."""
    prompts = [encode_prompt(tokenizer, e.prompt, template) for e in examples]
    flat_prompts = [p for p in prompts for _ in range(group_size)]
    res: GenerationResult = generate(lm, flat_prompts, dcfg)
    rollouts = []
    for i, (p, seq, canvas, fw) in enumerate(zip(flat_prompts, res.sequences, res.canvases, res.forwards)):
        region = response_region(canvas, len(p), seq, dcfg.block_length)
        if dcfg.mask_id in region:
            raise RuntimeError("the decoder left mask tokens inside a returned block; cannot score it")
        trajectory = res.trajectories[i] if res.trajectories is not None else None
        rollouts.append(Rollout(examples[i // group_size], p, region, list(seq), make_completion(tokenizer, seq), fw,
                                trajectory=trajectory))
    return RolloutBatch(rollouts, group_size, res.tokens_per_forward, res.wall_seconds)


def score_rollouts(batch: RolloutBatch, reward: CombinedReward, workers: int = 1) -> RolloutBatch:
    """Fill each rollout's reward; a reward that raises scores that sample as failed (logged)."""
    jobs = [(r.completion, r.example) for r in batch.rollouts]
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            scores = list(pool.map(lambda job: reward(*job), jobs))
    else:
        scores = [reward(*job) for job in jobs]
    for r, s in zip(batch.rollouts, scores):
        r.score = s
        batch.errors.extend(s.errors)
    for message in batch.errors[:3]:
        log.warning("reward failed (sample scored as failed): %s", message)
    batch.rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
    batch.correct = torch.tensor([float(s.correct) for s in scores])
    return batch


def judge_rollout_edits(batch: RolloutBatch, tokenizer) -> EditStats:
    """Every T2T edit of the batch's (recorded) decodes as fix / break / neutral (components.edits).
    Wrong answers are judged against the reference only where it is the one valid answer."""
    stats = EditStats()
    for r in batch.rollouts:
        stats = stats + judge_example_edits(r.trajectory, r.sequence, tokenizer, r.example,
                                            correct=bool(r.score.correct))
    return stats


def judge_rollout_structural_edits(batch: RolloutBatch, tokenizer) -> StructuralStats:
    """Every deletion and insertion of the batch's (recorded) decodes as fix / break / neutral, judged
    as `judge_rollout_edits` judges T2T edits."""
    stats = StructuralStats()
    for r in batch.rollouts:
        stats = stats + judge_example_structural_edits(r.trajectory, r.sequence, tokenizer, r.example,
                                                       correct=bool(r.score.correct))
    return stats


def evaluate_policy(lm, tokenizer, examples: list[Example], dcfg: DecodeConfig, reward: CombinedReward,
                    template: str, samples_per_prompt: int = 1) -> dict[str, float]:
    """Accuracy (the accuracy reward term), TPF, length and the edit accounting (edits per sample,
    fixes, breaks, precision, oscillations) on `examples`, averaged over `samples_per_prompt`
    responses each: whether the policy's edits repair, not only how often it edits."""
    dcfg = replace(dcfg, record_trajectory=True)
    batch = score_rollouts(generate_rollouts(lm, tokenizer, examples, samples_per_prompt, dcfg, template), reward)
    edits = {k: v for k, v in judge_rollout_edits(batch, tokenizer).named().items() if v is not None}
    if dcfg.levenshtein:
        edits.update((k, v) for k, v in judge_rollout_structural_edits(batch, tokenizer).named().items() if v is not None)
    return {"accuracy": float(batch.correct.mean()), "tpf": batch.tokens_per_forward,
            "length": batch.mean_length, "reward_mean": float(batch.rewards.mean()),
            "finished": batch.finished_fraction, "wall_seconds": batch.wall_seconds, **edits}
