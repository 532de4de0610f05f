"""Model configuration in the vocabulary of the released LLaDA2.x `config.json` files.

One dataclass covers the released MoE checkpoints and the tiny dense models we train on CPU
(`num_experts=0`). Fields the network does not use are still kept so that `save_pretrained`
writes back what `from_pretrained` read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write

CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A configuration field has a value the network cannot be built from."""


@dataclass
class ModelConfig:
    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int = 5120
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int | None = None
    partial_rotary_factor: float = 0.5
    rope_theta: float = 600000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    use_qk_norm: bool = True
    use_qkv_bias: bool = False
    use_bias: bool = False
    hidden_act: str = "silu"
    norm_head: bool = False
    # Mixture of experts. num_experts == 0 (or None) gives a dense model.
    num_experts: int | None = 256
    num_shared_experts: int | None = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: int = 512
    first_k_dense_replace: int = 1
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    # Special tokens used by diffusion decoding. The released config.json files name only the pad id;
    # the mask and EOS ids then come from the tokenizer (see model.tokenizer) or DecodeConfig.
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    mask_token_id: int | None = None
    # Levenshtein editing (LLaDA2.2): the DELETE and INSERT edit-control ids, two rows past the
    # tokenizer's ids (model.levenshtein.add_edit_controls). None = no such rows, editing substitutes only.
    delete_token_id: int | None = None
    insert_token_id: int | None = None
    initializer_range: float = 0.02
    model_type: str = "llada2_moe"
    architectures: list[str] = field(default_factory=lambda: ["LLaDA2MoeModelLM"])
    torch_dtype: str = "float32"
    # Fields kept verbatim from config.json that the network does not read.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}) when head_dim is not given"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ----------------------------------------------------------------- derived fields
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    def layer_is_moe(self, layer_idx: int) -> bool:
        return self.is_moe and layer_idx >= self.first_k_dense_replace

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        positive = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "max_position_embeddings"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_dim % 2:
            raise ConfigError(
                f"partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1] and give an even "
                f"rotary dimension (head_dim={self.head_dim} -> {self.rotary_dim})"
            )
        if self.rope_scaling not in (None, {}):
            raise ConfigError(f"rope_scaling={self.rope_scaling!r} is not supported (only plain RoPE)")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act={self.hidden_act!r} is not supported (expected 'silu')")
        if self.norm_head:
            raise ConfigError("norm_head=true is not supported by this implementation")
        if self.is_moe:
            if self.num_experts % self.n_group:
                raise ConfigError(f"num_experts ({self.num_experts}) must be divisible by n_group ({self.n_group})")
            if not 1 <= self.topk_group <= self.n_group:
                raise ConfigError(f"topk_group ({self.topk_group}) must be in [1, n_group={self.n_group}]")
            per_group = self.num_experts // self.n_group
            if per_group < 2:
                raise ConfigError("each expert group needs at least 2 experts (groups are scored by their top-2)")
            if not 1 <= self.num_experts_per_tok <= self.topk_group * per_group:
                raise ConfigError(
                    f"num_experts_per_tok ({self.num_experts_per_tok}) must be in [1, topk_group * experts per "
                    f"group = {self.topk_group * per_group}]"
                )
        else:
            if not isinstance(self.intermediate_size, int) or self.intermediate_size <= 0:
                raise ConfigError(f"intermediate_size must be a positive integer, got {self.intermediate_size!r}")
        for name in ("pad_token_id", "eos_token_id", "mask_token_id", "delete_token_id", "insert_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"config field '{name}'={value} is outside the vocabulary [0, {self.vocab_size})")
        controls = (self.delete_token_id, self.insert_token_id)
        if (controls[0] is None) != (controls[1] is None):
            raise ConfigError(f"config fields delete_token_id and insert_token_id must be set together, got {controls}")
        if controls[0] is not None:
            taken = {self.pad_token_id, self.eos_token_id, self.mask_token_id} - {None}
            if controls[0] == controls[1] or taken & set(controls):
                raise ConfigError(f"config fields delete_token_id/insert_token_id={controls} must differ from each "
                                  f"other and from the pad/eos/mask ids {sorted(taken)}")

    # ----------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(data.get("extra", {}))
        extra.update({k: v for k, v in data.items() if k not in known and k != "extra"})
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for name in ("delete_token_id", "insert_token_id"):  # a released config.json saves back without them
            if data[name] is None:
                del data[name]
        data.update(self.extra)
        return data

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "ModelConfig":
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} at {file}: expected a Hugging Face-style model folder")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{file} is not valid JSON: {err}") from err
        extra_rotary = data.get("rotary_dim")
        config = cls.from_dict(data)
        if extra_rotary is not None and extra_rotary != config.rotary_dim:
            raise ConfigError(
                f"{file}: rotary_dim={extra_rotary} disagrees with head_dim*partial_rotary_factor={config.rotary_dim}"
            )
        return config

    def save_pretrained(self, path: str | os.PathLike) -> None:
        atomic_write(Path(path) / CONFIG_NAME, json.dumps(self.to_dict(), indent=2) + "\n")

    # ----------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A small dense model that trains on two CPU cores in minutes."""
        fields = dict(
            vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.5,
            rope_theta=10000.0, num_experts=0, num_shared_experts=None, max_position_embeddings=1024,
            pad_token_id=None, eos_token_id=None, mask_token_id=None,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def tiny_moe(cls, **overrides: Any) -> "ModelConfig":
        """A small MoE model with the released layout (dense first layer, routed + shared experts)."""
        fields = dict(
            num_experts=8, num_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
            moe_intermediate_size=64, first_k_dense_replace=1, num_hidden_layers=3,
        )
        fields.update(overrides)
        return cls.tiny(**fields)


def fill_special_ids(cfg: ModelConfig, tokenizer: Any) -> None:
    """Special ids the config leaves unset taken from its tokenizer, in place: a released config.json
    names no mask id (the reference `generate` takes it as an argument), its tokenizer_config.json does."""
    for name in ("mask", "eos", "pad"):
        if getattr(cfg, f"{name}_token_id") is None:
            setattr(cfg, f"{name}_token_id", getattr(tokenizer, f"{name}_id"))


def check_tokenizer(cfg: ModelConfig, tokenizer: Any, *, need_mask_id: bool = False) -> None:
    """Raise one ConfigError line naming every way `tokenizer` cannot feed a model built from `cfg`.

    `tokenizer` is a `model.tokenizer.Tokenizer`, or anything with its `vocab_size`, `pad_id`, `eos_id`
    and `mask_id`. A special id the config leaves unset comes from the tokenizer at decoding time, so
    only the ids it sets must agree. Training writes the config's mask id into its checkpoint and asks
    for one with `need_mask_id`.
    """
    problems = []
    if need_mask_id and cfg.mask_token_id is None:
        problems.append("the model has no mask_token_id (a diffusion LM cannot train without one)")
    if tokenizer.vocab_size > cfg.vocab_size:
        problems.append(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}")
    for name in ("mask", "eos", "pad"):
        want = getattr(cfg, f"{name}_token_id")
        got = getattr(tokenizer, f"{name}_id")
        if want is not None and want != got:
            problems.append(f"model {name}_token_id={want} but the tokenizer's {name} id is {got}")
    if problems:
        raise ConfigError("tokenizer and model do not match: " + "; ".join(problems))
