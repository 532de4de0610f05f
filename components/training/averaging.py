"""Top-k checkpoint merging (LLaDA2.0 §4.3): the parameter mean of the k best checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (in float32, cast back); other tensors from the first.

    All state dicts must have the same keys and shapes; a mismatch names the key.
    """
    if not state_dicts:
        raise ValueError("average_state_dicts: no state dicts given")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        if sd.keys() != first.keys():
            diff = sorted(set(sd.keys()) ^ set(first.keys()))[:5]
            raise ValueError(f"average_state_dicts: state dict {i} has different keys (e.g. {diff})")
        for k, v in sd.items():
            if v.shape != first[k].shape:
                raise ValueError(f"average_state_dicts: {k} has shape {tuple(v.shape)} in state dict {i}, "
                                 f"{tuple(first[k].shape)} in the first")
    out: dict[str, torch.Tensor] = {}
    for k, v in first.items():
        if v.is_floating_point():
            total = torch.zeros_like(v, dtype=torch.float32)
            for sd in state_dicts:
                total += sd[k].float()
            out[k] = (total / len(state_dicts)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def lightning_weights(path: str | os.PathLike, prefix: str = "lm.") -> dict[str, torch.Tensor]:
    """The network's weights from a Lightning checkpoint (keys under `prefix` of the module)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict")
    if state is None:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path}: no weights under the prefix {prefix!r}")
    return weights


def average_checkpoints(paths: Sequence[str | os.PathLike], prefix: str = "lm.") -> dict[str, torch.Tensor]:
    """Mean of the network weights of several Lightning checkpoints."""
    return average_state_dicts([lightning_weights(p, prefix) for p in paths])
