"""Which linear layers a quantizer touches.

Only `nn.Linear` weights are candidates: embeddings, RMSNorm weights and the MoE router (a plain
parameter of `Router`, kept in float32 as the reference computes it) are never quantized.
"""

from __future__ import annotations

from torch import nn


def name_matches(name: str, pattern: str) -> bool:
    """True when `pattern`'s dotted components appear contiguously in `name`'s ("mlp" matches
    "model.layers.0.mlp.up_proj"; "gate" does not match "gate_proj")."""
    parts, want = name.split("."), pattern.split(".")
    return any(parts[i:i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def quantizable_linears(lm: nn.Module, skip_modules: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Fully qualified names of the `nn.Linear` modules to quantize, in module order.

    A linear whose weight is shared with an embedding (tied lm_head) is skipped: the embedding stays
    in full precision, so its tied twin must too.
    """
    embedding_weights = {id(m.weight) for m in lm.modules() if isinstance(m, nn.Embedding)}
    names = []
    for name, module in lm.named_modules():
        if not isinstance(module, nn.Linear) or id(module.weight) in embedding_weights:
            continue
        if any(name_matches(name, p) for p in skip_modules):
            continue
        names.append(name)
    return names
