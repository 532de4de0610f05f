"""LoRA adapters (peft) on the plain network, shared by SFT and RL.

`peft.inject_adapter_in_model` wraps the targeted `nn.Linear`s of the network in place (the class
stays `DiffusionLM`, the base weights are frozen, only the adapters train). Switching the adapters
off gives back the base network exactly, with no second copy of its weights: RL's KL reference is
that. Exports fold the adapters into their base weights and use the checkpoint's own key names, so a
LoRA run writes a plain released-layout checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .config import LoraSection


class LoraInputError(ValueError):
    """The network cannot take the configured adapters (peft missing, a target it lacks)."""


def inject_lora(lm: nn.Module, lora: LoraSection, key: str) -> nn.Module:
    """Wrap `lora.target_modules` of `lm` with adapters, in place; LoraInputError naming `key` (train.lora,
    rl.lora) when peft is missing or a target names no module of the network."""
    try:
        import peft
    except ImportError as exc:
        raise LoraInputError(f"{key}.enabled=true needs the 'peft' package (pip install peft)") from exc
    names = {n.split(".")[-1] for n, _ in lm.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise LoraInputError(f"{key}.target_modules: no module named {missing} in the network")
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules))
    return peft.inject_adapter_in_model(config, lm)


def _lora_layers(lm: nn.Module) -> list[nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # without peft no network has adapters
        return []
    return [m for m in lm.modules() if isinstance(m, LoraLayer)]


@contextmanager
def adapters_disabled(lm: nn.Module) -> Iterator[nn.Module]:
    """`lm` computing with its base weights alone for the duration (every adapter layer returns its
    base layer's output), then the adapters on again, trainable as before. peft's
    `PeftModel.disable_adapter` does this for a wrapped model; `lm` is the plain network."""
    layers = _lora_layers(lm)
    if not layers:
        raise ValueError("adapters_disabled: the network has no LoRA adapters")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield lm
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def _is_adapter(key: str) -> bool:
    return ".lora_" in key


def _released_key(key: str) -> str:
    """A wrapped layer's key under the checkpoint's own name (peft puts the original under base_layer)."""
    return key.replace(".base_layer.", ".")


def merge_lora_weights(weights: dict[str, torch.Tensor], alpha: float, r: int) -> dict[str, torch.Tensor]:
    """A peft LoRA state dict folded into the checkpoint's own key names: W + (alpha / r) B A per adapted
    linear layer, the adapter tensors dropped. It works on the gathered weights alone, so a sharded
    (FSDP) run exports from its full checkpoint without rebuilding the model (the adapted weights are
    new tensors; a live network exports through `released_network` instead, which merges in place)."""
    scale = alpha / r
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if _is_adapter(key):
            continue
        if ".base_layer." in key and key.endswith(".weight"):
            prefix = key[: -len("base_layer.weight")]
            a, b = weights.get(f"{prefix}lora_A.default.weight"), weights.get(f"{prefix}lora_B.default.weight")
            if a is not None and b is not None:
                value = (value.float() + scale * (b.float() @ a.float())).to(value.dtype)
        out[_released_key(key)] = value
    return out


@contextmanager
def released_network(lm: nn.Module) -> Iterator[nn.Module]:
    """For saving a live network: one of `lm`'s class whose weights are `lm`'s with the adapters folded
    in, under the released key names and sharing `lm`'s storage. peft merges in place, so no second
    copy of the weights exists (`merge_lora_weights` would build new adapted weights: on a GPU, a
    second copy of most of an MoE); the merge is undone after, up to rounding in the weights' dtype
    (an export ends a run). A network without adapters is yielded as it is."""
    layers = _lora_layers(lm)
    if not layers:
        yield lm
        return
    for layer in layers:
        layer.merge()
    try:
        with torch.device("meta"):
            plain = type(lm)(lm.config)
        weights = {_released_key(k): v for k, v in lm.state_dict().items() if not _is_adapter(k)}
        plain.load_state_dict(weights, strict=not lm.config.tie_word_embeddings, assign=True)
        if lm.config.tie_word_embeddings:
            plain.lm_head.weight = plain.model.word_embeddings.weight
        yield plain
    finally:
        for layer in layers:
            layer.unmerge()
