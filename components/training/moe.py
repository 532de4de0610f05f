"""Auxiliary-loss-free expert balancing for MoE layers during fine-tuning.

The released LLaDA2 checkpoints route with a per-expert `expert_bias` added to the router scores
for selection only. Training keeps it alive the way it was trained: after every optimizer step,
each layer's bias moves by `rate * sign(mean_load - load)`, so overloaded experts become less
likely to be picked and idle ones more. Without it, fine-tuning a released checkpoint can collapse
its routing onto a few experts. Loads are summed over all training forwards of the step (micro-
batches, MTF turns) and, under DDP, over all ranks, so every replica applies the same update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _moe_layers(lm: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every SparseMoE block: modules with a router holding `expert_bias`."""
    return [(name, m) for name, m in lm.named_modules()
            if hasattr(m, "gate") and isinstance(getattr(m.gate, "expert_bias", None), torch.Tensor)]


class ExpertLoadTracker:
    """Accumulates tokens-per-expert of training forwards; `update()` nudges the biases and reports."""

    def __init__(self, lm: nn.Module, rate: float):
        self.rate = rate
        self.layers = _moe_layers(lm)
        self.loads: dict[str, torch.Tensor] = {}
        for name, module in self.layers:
            module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            load = getattr(module, "last_expert_load", None)
            if module.training and load is not None:
                prev = self.loads.get(name)
                self.loads[name] = load.detach().float() if prev is None else prev + load.detach().float()
        return hook

    def update(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Apply the bias update from the loads since the last call; return load statistics to log.

        `reduce_sum(tensor)` sums a tensor over data-parallel ranks (None on a single process).
        Statistics per layer: max/mean and min/mean of the per-expert load (1.0 = perfectly balanced).
        """
        stats: dict[str, float] = {}
        for i, (name, module) in enumerate(self.layers):
            load = self.loads.pop(name, None)
            if load is None:
                continue
            if reduce_sum is not None:
                load = reduce_sum(load, reduce_op="sum")
            mean = load.mean()
            if self.rate > 0:
                bias = module.gate.expert_bias
                bias.add_((torch.sign(mean - load) * self.rate).to(bias.dtype))
            tag = f"layer{name.split('.')[-2] if name.endswith('.mlp') else i}"
            stats[f"{tag}/load_max_over_mean"] = float(load.max() / mean.clamp_min(1e-9))
            stats[f"{tag}/load_min_over_mean"] = float(load.min() / mean.clamp_min(1e-9))
        self.loads.clear()
        return stats
