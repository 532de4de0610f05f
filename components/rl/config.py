"""Schema of the RL (EBPO) stage; defaults live in `conf/rl/default.yaml`.

Validation runs in `__post_init__` (OmegaConf builds the dataclasses, so it runs on load) and names
the full key path, so a bad config stops before a checkpoint is read or a rollout decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROMPT_SOURCES = ("synthetic", "jsonl")
PROMPT_TEMPLATES = ("chat", "raw")
DECODE_MODES = ("speedy", "quality")
NOISE_SCHEDULES = ("stratified", "fixed")
RATIO_NORMALIZATIONS = ("sum", "mean")
LR_SCHEDULES = ("constant", "cosine")


def _fail(path: str, expected: str, got: Any) -> None:
    raise ValueError(f"rl.{path} must be {expected}, got {got!r}")


@dataclass
class PromptsConfig:
    """Where RL prompts and their verifiable answers come from.

    synthetic: `family` from components.tasks (train split for rollouts, `eval_split` for the curve).
    jsonl: records {"id", "prompt", "answer", "meta"} in `train_path` / `eval_path` (meta may carry
    e.g. "test" and "entry_point" for code rewards).
    """

    source: str = "synthetic"
    family: str = "sum"
    train_path: str = ""
    eval_path: str = ""
    train_size: int = 2000
    eval_size: int = 200
    eval_split: str = "heldout"
    seed: int = 0
    template: str = "chat"  # chat: the SFT chat template (user turn + assistant marker); raw: the text
    params: dict = field(default_factory=dict)  # synthetic family difficulty, e.g. {max_value: 9, max_len: 10}

    def validate(self) -> None:
        if self.source not in PROMPT_SOURCES:
            _fail("prompts.source", f"one of {PROMPT_SOURCES}", self.source)
        if self.template not in PROMPT_TEMPLATES:
            _fail("prompts.template", f"one of {PROMPT_TEMPLATES}", self.template)
        if self.source == "jsonl" and not self.train_path:
            _fail("prompts.train_path", "a JSONL file when prompts.source is 'jsonl'", self.train_path)
        if self.train_size < 1:
            _fail("prompts.train_size", ">= 1", self.train_size)
        if self.eval_size < 0:
            _fail("prompts.eval_size", ">= 0", self.eval_size)


@dataclass
class RolloutConfig:
    """G sampled responses per prompt from the draft-and-edit decoder, in S or Q mode.

    `mode` picks the decode preset (conf/decode/<mode>.yaml); the fields below that are not None
    override it. Sampling must be on (temperature > 0) or a group has nothing to compare.
    """

    mode: str = "speedy"
    group_size: int = 8
    prompts_per_step: int = 8
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    gen_length: int = 32
    block_length: int | None = None
    threshold: float | None = None
    editing_threshold: float | None = None
    max_post_steps: int | None = None
    eos_early_stop: bool = True
    max_batch_size: int | None = None

    def validate(self) -> None:
        if self.mode not in DECODE_MODES:
            _fail("rollout.mode", f"one of {DECODE_MODES}", self.mode)
        if self.group_size < 2:
            _fail("rollout.group_size", ">= 2 (group-relative advantages compare responses to one prompt)",
                  self.group_size)
        if self.prompts_per_step < 1:
            _fail("rollout.prompts_per_step", ">= 1", self.prompts_per_step)
        if not self.temperature > 0:
            _fail("rollout.temperature", "> 0 (rollouts must sample)", self.temperature)
        if self.gen_length < 1:
            _fail("rollout.gen_length", ">= 1", self.gen_length)
        if self.block_length is not None and self.block_length < 1:
            _fail("rollout.block_length", ">= 1 or null (the preset's)", self.block_length)


@dataclass
class EstimatorConfig:
    """The ELBO likelihood proxy of eq. 5: N noise levels t_n with weights w_n.

    stratified: t_n drawn uniformly in the n-th of N equal strata of [t_min, t_max], fresh per
    rollout batch. fixed: t_n = levels[n]. Weights: `weights` when given, else the ELBO weight
    1/(N t_n), which puts every level on the scale of the whole sequence's log-likelihood.
    """

    num_levels: int = 4
    schedule: str = "stratified"
    t_min: float = 0.1
    t_max: float = 1.0
    levels: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    ratio: str = "sum"  # sum: sequence log-ratio (eq. 5); mean: divided by the response length
    keep_weight: float = 0.0  # > 0 adds the log-prob of keeping visible tokens (T2T); 0 = eq. 5 exactly

    def validate(self) -> None:
        if self.num_levels < 1:
            _fail("estimator.num_levels", ">= 1", self.num_levels)
        if self.schedule not in NOISE_SCHEDULES:
            _fail("estimator.schedule", f"one of {NOISE_SCHEDULES}", self.schedule)
        if not 0.0 < self.t_min <= self.t_max <= 1.0:
            _fail("estimator.t_min/t_max", "0 < t_min <= t_max <= 1", (self.t_min, self.t_max))
        if self.schedule == "fixed":
            if len(self.levels) != self.num_levels:
                _fail("estimator.levels", f"{self.num_levels} values (num_levels) for the fixed schedule",
                      list(self.levels))
            if any(not 0.0 < t <= 1.0 for t in self.levels):
                _fail("estimator.levels", "values in (0, 1]", list(self.levels))
        if self.weights and len(self.weights) != self.num_levels:
            _fail("estimator.weights", f"empty or {self.num_levels} values (num_levels)", list(self.weights))
        if any(w < 0 for w in self.weights):
            _fail("estimator.weights", "non-negative", list(self.weights))
        if self.ratio not in RATIO_NORMALIZATIONS:
            _fail("estimator.ratio", f"one of {RATIO_NORMALIZATIONS}", self.ratio)
        if self.keep_weight < 0:
            _fail("estimator.keep_weight", ">= 0", self.keep_weight)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    inner_steps: int = 2  # optimisation steps per rollout batch, theta_old fixed
    micro_batch_size: int = 32  # sequences per forward/backward
    eps_low: float = 0.2
    eps_high: float = 0.28
    kl_coef: float = 0.0  # weight of the KL to the frozen initial model (0 = no reference kept)
    scale_advantages: bool = True  # divide by the group's reward std (False: Dr. GRPO's plain centring)
    skip_zero_advantage: bool = True  # groups with equal rewards carry no policy gradient
    # Multiplies negative advantages. 1.0 is the symmetric objective of eq. 4. A failed response
    # mostly shares its tokens with the successful ones, so pushing all of them down lowers the
    # model's confidence broadly (fewer tokens pass the threshold: TPF falls); < 1 damps that.
    negative_scale: float = 1.0
    # Polyak average of the weights after every optimizer step (0 = off). Rollouts still come from
    # the online policy; evaluations and the exported checkpoint use the average. Why: with a few
    # informative groups per step the online iterate jitters, and its greedy accuracy with it.
    ema_decay: float = 0.0
    # constant, or cosine from lr to lr * min_lr_ratio over the run. The run ends at max_steps or
    # max_minutes, whichever comes first, so the cosine follows whichever is further along.
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    # Control arm: shuffle each group's advantages among its responses. The update keeps its size
    # and noise but loses the link between reward and response, so a real gain must not appear.
    permute_advantages: bool = False

    def validate(self) -> None:
        if not self.lr > 0:
            _fail("optim.lr", "> 0", self.lr)
        if self.inner_steps < 1:
            _fail("optim.inner_steps", ">= 1", self.inner_steps)
        if self.micro_batch_size < 1:
            _fail("optim.micro_batch_size", ">= 1", self.micro_batch_size)
        if not 0.0 <= self.eps_low < 1.0:
            _fail("optim.eps_low", "in [0, 1)", self.eps_low)
        if self.eps_high < 0.0:
            _fail("optim.eps_high", ">= 0", self.eps_high)
        if self.kl_coef < 0.0:
            _fail("optim.kl_coef", ">= 0", self.kl_coef)
        if self.grad_clip < 0.0:
            _fail("optim.grad_clip", ">= 0", self.grad_clip)
        if not 0.0 <= self.negative_scale <= 1.0:
            _fail("optim.negative_scale", "in [0, 1]", self.negative_scale)
        if not 0.0 <= self.ema_decay < 1.0:
            _fail("optim.ema_decay", "in [0, 1) (0 = off)", self.ema_decay)
        if self.schedule not in LR_SCHEDULES:
            _fail("optim.schedule", f"one of {LR_SCHEDULES}", self.schedule)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            _fail("optim.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)


@dataclass
class RewardSpec:
    """One term of the reward: a registered reward `name`, its weight and its parameters."""

    name: str = "synthetic"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """Held-out accuracy and TPF in the rollout mode (the improvement curve).

    temperature 0 measures the greedy decoder. The policy EBPO optimises is the rollouts' sampled
    one, so `temperature` = the rollouts' with `samples_per_prompt` > 1 measures that policy, averaged
    over k draws per prompt (a fixed seed: every evaluation draws the same random numbers).
    """

    every_steps: int = 10  # rollout steps between evaluations (0 = only before and after)
    temperature: float = 0.0
    samples_per_prompt: int = 1
    max_batch_size: int | None = 64

    def validate(self) -> None:
        if self.every_steps < 0:
            _fail("eval.every_steps", ">= 0", self.every_steps)
        if self.temperature < 0:
            _fail("eval.temperature", ">= 0", self.temperature)
        if self.samples_per_prompt < 1:
            _fail("eval.samples_per_prompt", ">= 1", self.samples_per_prompt)
        if self.samples_per_prompt > 1 and self.temperature == 0:
            _fail("eval.samples_per_prompt", "1 when eval.temperature is 0 (greedy draws are identical)",
                  self.samples_per_prompt)
        if self.max_batch_size is not None and self.max_batch_size < 1:
            _fail("eval.max_batch_size", "null or >= 1", self.max_batch_size)


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"  # ddp / fsdp as for SFT
    precision: str = "32-true"
    num_threads: int = 0  # torch intra-op threads (0 = leave torch's default)


@dataclass
class RLConfig:
    seed: int = 0
    max_steps: int = 100  # rollout batches
    max_minutes: float = 0.0  # wall-clock budget for the whole stage, evaluations included (0 = none)
    tokenizer_path: str | None = None  # default: the model directory
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    accuracy_reward: str | None = None  # which reward defines "correct" (default: the first)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from .rewards import REWARDS  # late: rewards imports the sandbox

        if self.max_steps < 1:
            _fail("max_steps", ">= 1", self.max_steps)
        if self.max_minutes < 0:
            _fail("max_minutes", ">= 0", self.max_minutes)
        for part in (self.prompts, self.rollout, self.estimator, self.optim, self.eval):
            part.validate()
        if not self.rewards:
            _fail("rewards", "a non-empty list of {name, weight, params}", self.rewards)
        for i, spec in enumerate(self.rewards):
            name = spec.name if isinstance(spec, RewardSpec) else spec.get("name")
            if name not in REWARDS:
                raise ValueError(f"rl.rewards[{i}].name: unknown reward {name!r}; known: {sorted(REWARDS)}")
        if self.optim.ema_decay and self.trainer.strategy == "fsdp":
            _fail("optim.ema_decay", "0 under trainer.strategy 'fsdp' (the average needs the full weights)",
                  self.optim.ema_decay)
        names = [s.name for s in self.rewards]
        if self.accuracy_reward is not None and self.accuracy_reward not in names:
            _fail("accuracy_reward", f"null or one of the configured rewards {names}", self.accuracy_reward)
