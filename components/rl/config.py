"""Schema of the RL (EBPO) stage; its defaults live in `conf/rl/defaults/rl.yaml`.

Validation runs in `__post_init__` (OmegaConf builds the dataclasses, so it runs on load) and names
the full key path, so a bad config stops before a checkpoint is read or a rollout decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.config import check_choice, check_fraction, check_min, check_positive, conf_defaults, fail
from components.presets import DecodeChoice
from components.training.config import LoraSection

PROMPT_SOURCES = ("synthetic", "jsonl")
PROMPT_TEMPLATES = ("chat", "raw")
NOISE_SCHEDULES = ("stratified", "fixed")
RATIO_NORMALIZATIONS = ("sum", "mean")
LR_SCHEDULES = ("constant", "cosine")
# DecodeConfig fields the rollouts set themselves (sampling, answer length, ids, batching): not overridable
# through rollout.decode.overrides, so that each has one key.
ROLLOUT_OWNED = ("gen_length", "temperature", "top_k", "top_p", "eos_early_stop", "seed", "eos_id", "mask_id",
                 "max_batch_size")


@dataclass
@conf_defaults("rl/defaults/rl.yaml", "prompts")
class PromptsConfig:
    """Where RL prompts and their verifiable answers come from.

    synthetic: `family` from components.families (train split for rollouts, `eval_split` for the curve).
    jsonl: records {"id", "prompt", "answer", "meta"} in `train_path` / `eval_path` (meta may carry
    e.g. "test" and "entry_point" for code rewards).
    """

    source: str
    family: str
    train_path: str
    eval_path: str
    train_size: int
    eval_size: int
    eval_split: str
    seed: int
    template: str  # chat: the SFT chat template (user turn + assistant marker); raw: the text
    params: dict  # synthetic family difficulty, e.g. {max_value: 9, max_len: 10}

    def validate(self) -> None:
        check_choice("rl.prompts.source", self.source, PROMPT_SOURCES)
        check_choice("rl.prompts.template", self.template, PROMPT_TEMPLATES)
        if self.source == "jsonl" and not self.train_path:
            fail("rl.prompts.train_path", f"must be a JSONL file when prompts.source is 'jsonl', "
                                          f"got {self.train_path!r}")
        check_min("rl.prompts.train_size", self.train_size, 1)
        check_min("rl.prompts.eval_size", self.eval_size, 0)
        if self.source == "synthetic":
            from components.families import SYNTHETIC_FAMILIES, get_family

            if self.family not in SYNTHETIC_FAMILIES:
                fail("rl.prompts.family", f"unknown family {self.family!r}; known: {sorted(SYNTHETIC_FAMILIES)}")
            try:
                get_family(self.family, **self.params)
            except (TypeError, ValueError) as exc:
                fail("rl.prompts.params", str(exc))


@dataclass
@conf_defaults("rl/defaults/rl.yaml", "rollout")
class RolloutConfig:
    """G sampled responses per prompt from the draft-and-edit decoder, with the S or Q preset.

    `decode` is the preset (conf/decode/<preset>.yaml) and overrides of its thresholds, block length and
    edit rules; the sampling fields and the answer length are the rollouts' own, set here. Sampling must be
    on (temperature > 0) or a group has nothing to compare.
    """

    decode: DecodeChoice
    group_size: int
    prompts_per_step: int
    temperature: float
    top_k: int | None
    top_p: float | None
    gen_length: int
    eos_early_stop: bool
    max_batch_size: int | None

    def validate(self) -> None:
        self.decode.check("rl.rollout.decode")
        owned = sorted(set(self.decode.overrides) & set(ROLLOUT_OWNED))
        if owned:
            fail(f"rl.rollout.decode.overrides.{owned[0]}", f"is set by the rollouts (rl.rollout.{owned[0]})")
        if self.group_size < 2:
            fail("rl.rollout.group_size", "must be >= 2 (group-relative advantages compare responses to one "
                                          f"prompt), got {self.group_size!r}")
        if self.prompts_per_step < 1:
            fail("rl.rollout.prompts_per_step", f"must be >= 1, got {self.prompts_per_step!r}")
        if not self.temperature > 0:
            fail("rl.rollout.temperature", f"must be > 0 (rollouts must sample), got {self.temperature!r}")
        if self.gen_length < 1:
            fail("rl.rollout.gen_length", f"must be >= 1, got {self.gen_length!r}")


@dataclass
@conf_defaults("rl/defaults/rl.yaml", "estimator")
class EstimatorConfig:
    """The ELBO likelihood proxy of eq. 5: N noise levels t_n with weights w_n.

    stratified: t_n drawn uniformly in the n-th of N equal strata of [t_min, t_max], fresh per
    rollout batch. fixed: t_n = levels[n]. Weights: `weights` when given, else the ELBO weight
    1/(N t_n), which puts every level on the scale of the whole sequence's log-likelihood.
    """

    num_levels: int
    schedule: str
    t_min: float
    t_max: float
    levels: list[float]
    weights: list[float]
    ratio: str  # sum: sequence log-ratio (eq. 5); mean: divided by the response length
    keep_weight: float  # > 0 adds the log-prob of keeping visible tokens (T2T); 0 = eq. 5 exactly
    # > 0 adds the log-prob of editing substituted visible tokens back into the rollout's tokens (the
    # T2T decision RL otherwise never trains); needs edit_rate > 0. 0 = off.
    edit_weight: float
    edit_rate: float  # share of the visible response tokens shown substituted per noise level
    # L-EBPO (LLaDA2.2 §3.2): share of the response blocks shown, per level, with deletions, duplications
    # or run shifts, their actions (tokens, DELETE, INSERT) recovered by the LCS labels; the structural
    # actions at visible tokens are edit terms, so it needs edit_weight > 0 and a model with the
    # DELETE/INSERT rows. 0 = off.
    levenshtein_rate: float
    levenshtein_max_ops: int  # structural errors per Levenshtein block: 1 .. this many

    def validate(self) -> None:
        check_min("rl.estimator.num_levels", self.num_levels, 1)
        check_choice("rl.estimator.schedule", self.schedule, NOISE_SCHEDULES)
        if not 0.0 < self.t_min <= self.t_max <= 1.0:
            fail("rl.estimator.t_min/t_max", f"must be 0 < t_min <= t_max <= 1, got {(self.t_min, self.t_max)!r}")
        if self.schedule == "fixed":
            if len(self.levels) != self.num_levels:
                fail("rl.estimator.levels", f"must be {self.num_levels} values (num_levels) for the fixed "
                                            f"schedule, got {list(self.levels)!r}")
            if any(not 0.0 < t <= 1.0 for t in self.levels):
                fail("rl.estimator.levels", f"must be values in (0, 1], got {list(self.levels)!r}")
        if self.weights and len(self.weights) != self.num_levels:
            fail("rl.estimator.weights", f"must be empty or {self.num_levels} values (num_levels), "
                                         f"got {list(self.weights)!r}")
        if any(w < 0 for w in self.weights):
            fail("rl.estimator.weights", f"must be non-negative, got {list(self.weights)!r}")
        check_choice("rl.estimator.ratio", self.ratio, RATIO_NORMALIZATIONS)
        check_min("rl.estimator.keep_weight", self.keep_weight, 0)
        check_min("rl.estimator.edit_weight", self.edit_weight, 0)
        check_fraction("rl.estimator.edit_rate", self.edit_rate, include_one=False)
        if self.edit_weight > 0 and self.edit_rate == 0.0 and self.levenshtein_rate == 0.0:
            fail("rl.estimator.edit_rate", "must be > 0 when rl.estimator.edit_weight > 0 (no token is substituted)")
        check_fraction("rl.estimator.levenshtein_rate", self.levenshtein_rate)
        if not isinstance(self.levenshtein_max_ops, int) or self.levenshtein_max_ops < 1:
            fail("rl.estimator.levenshtein_max_ops", f"must be an integer >= 1, got {self.levenshtein_max_ops!r}")
        if self.levenshtein_rate > 0 and self.edit_weight == 0:
            fail("rl.estimator.levenshtein_rate", "needs rl.estimator.edit_weight > 0 (DELETE and INSERT at visible "
                 "tokens are edit terms)")


@dataclass
@conf_defaults("rl/defaults/rl.yaml", "optim")
class OptimConfig:
    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float  # max global gradient norm (0 = off)
    inner_steps: int  # optimisation steps per rollout batch, theta_old fixed
    micro_batch_size: int  # sequences per forward/backward
    eps_low: float
    eps_high: float
    kl_coef: float  # weight of the KL to the frozen initial model (0 = none; with LoRA: the adapters-off base)
    scale_advantages: bool  # divide by the group's reward std (False: Dr. GRPO's plain centring)
    skip_zero_advantage: bool  # groups with equal rewards carry no policy gradient
    # Multiplies negative advantages. 1.0 is the symmetric objective of eq. 4. A failed response
    # mostly shares its tokens with the successful ones, so pushing all of them down lowers the
    # model's confidence broadly (fewer tokens pass the threshold: TPF falls); < 1 damps that.
    negative_scale: float
    # Polyak average of the trained weights (with LoRA: the adapters) after every optimizer step
    # (0 = off). Rollouts still come from the online policy; evaluations and the exported checkpoint
    # use the average. Why: with a few informative groups per step the online iterate jitters, and
    # its greedy accuracy with it.
    ema_decay: float
    # constant, or cosine from lr to lr * min_lr_ratio over the run. The run ends at max_steps or
    # max_minutes, whichever comes first, so the cosine follows whichever is further along.
    schedule: str
    min_lr_ratio: float
    # Control arm: shuffle each group's advantages among its responses. The update keeps its size
    # and noise but loses the link between reward and response, so a real gain must not appear.
    permute_advantages: bool

    def validate(self) -> None:
        check_positive("rl.optim.lr", self.lr)
        check_min("rl.optim.inner_steps", self.inner_steps, 1)
        check_min("rl.optim.micro_batch_size", self.micro_batch_size, 1)
        check_fraction("rl.optim.eps_low", self.eps_low, include_one=False)
        check_min("rl.optim.eps_high", self.eps_high, 0)
        check_min("rl.optim.kl_coef", self.kl_coef, 0)
        check_min("rl.optim.grad_clip", self.grad_clip, 0)
        check_fraction("rl.optim.negative_scale", self.negative_scale)
        check_fraction("rl.optim.ema_decay", self.ema_decay, include_one=False, note=" (0 = off)")
        check_choice("rl.optim.schedule", self.schedule, LR_SCHEDULES)
        check_fraction("rl.optim.min_lr_ratio", self.min_lr_ratio)


@dataclass
@conf_defaults("rl/defaults/reward.yaml")
class RewardSpec:
    """One term of the reward: a registered reward `name`, its weight and its parameters."""

    name: str
    weight: float
    params: dict[str, Any]


@dataclass
@conf_defaults("rl/defaults/rl.yaml", "eval")
class EvalConfig:
    """Held-out accuracy and TPF in the rollouts' preset (the improvement curve).

    temperature 0 measures the greedy decoder. The policy EBPO optimises is the rollouts' sampled
    one, so `temperature` = the rollouts' with `samples_per_prompt` > 1 measures that policy, averaged
    over k draws per prompt (a fixed seed: every evaluation draws the same random numbers).
    """

    every_steps: int  # rollout steps between evaluations (0 = only before and after)
    temperature: float
    samples_per_prompt: int
    max_batch_size: int | None

    def validate(self) -> None:
        check_min("rl.eval.every_steps", self.every_steps, 0)
        check_min("rl.eval.temperature", self.temperature, 0)
        check_min("rl.eval.samples_per_prompt", self.samples_per_prompt, 1)
        if self.samples_per_prompt > 1 and self.temperature == 0:
            fail("rl.eval.samples_per_prompt", "must be 1 when eval.temperature is 0 (greedy draws are "
                                               f"identical), got {self.samples_per_prompt!r}")
        check_min("rl.eval.max_batch_size", self.max_batch_size, 1, allow_none=True)


@dataclass
@conf_defaults("rl/defaults/rl.yaml", "trainer")
class TrainerConfig:
    accelerator: str
    devices: int
    strategy: str  # ddp / fsdp as for SFT
    precision: str
    num_threads: int  # torch intra-op threads (0 = leave torch's default)


@dataclass
@conf_defaults("rl/defaults/rl.yaml")
class RLConfig:
    seed: int
    max_steps: int  # rollout batches
    max_minutes: float  # wall-clock budget for the whole stage, evaluations included (0 = none)
    checkpoint_every_steps: int  # rollout steps between writes of <out_dir>/rl_state.pt (0 = never)
    resume: bool  # continue from <out_dir>/rl_state.pt when it exists
    tokenizer_path: str | None  # default: the model directory
    prompts: PromptsConfig
    rollout: RolloutConfig
    estimator: EstimatorConfig
    optim: OptimConfig
    rewards: list[RewardSpec]
    accuracy_reward: str | None  # which reward defines "correct" (default: the first)
    eval: EvalConfig
    trainer: TrainerConfig
    # LoRA adapters on the policy, SFT's schema (train.lora): only the adapters train, the KL reference
    # is the same network with its adapters off, the export merges them (conf/rl/defaults/rl.yaml).
    lora: LoraSection

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from .rewards import REWARDS  # late: rewards imports the sandbox

        check_min("rl.max_steps", self.max_steps, 1)
        check_min("rl.max_minutes", self.max_minutes, 0)
        check_min("rl.checkpoint_every_steps", self.checkpoint_every_steps, 0, note=" (0 = never)")
        for part in (self.prompts, self.rollout, self.estimator, self.optim, self.eval):
            part.validate()
        if not self.rewards:
            fail("rl.rewards", f"must be a non-empty list of {{name, weight, params}}, got {self.rewards!r}")
        for i, spec in enumerate(self.rewards):
            name = spec.name if isinstance(spec, RewardSpec) else spec.get("name")
            if name not in REWARDS:
                fail(f"rl.rewards[{i}].name", f"unknown reward {name!r}; known: {sorted(REWARDS)}")
        if self.optim.ema_decay and self.trainer.strategy == "fsdp":
            fail("rl.optim.ema_decay", "must be 0 under trainer.strategy 'fsdp' (the average needs the full "
                                       f"weights), got {self.optim.ema_decay!r}")
        self.lora.validate("rl.lora")
        if self.lora.enabled and self.trainer.strategy == "fsdp":
            fail("rl.lora.enabled", "must be false under trainer.strategy 'fsdp' (FSDP decodes with a full copy of "
                                    "the weights on every rank, which LoRA exists to avoid)")
        names = [s.name for s in self.rewards]
        if self.accuracy_reward is not None and self.accuracy_reward not in names:
            fail("rl.accuracy_reward", f"must be null or one of the configured rewards {names}, "
                                       f"got {self.accuracy_reward!r}")
