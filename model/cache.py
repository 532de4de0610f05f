"""An explicit key/value cache for finished blocks, passed to `DiffusionLM.forward`.

Slot j of row r holds the keys/values of absolute position j of that row's sequence, so rows of
different lengths share one tensor; `lengths[r]` says how many leading slots of row r are kept.
Only finished (frozen) blocks are kept: under the block-causal mask they never change.

A forward with a cache writes its query tokens' keys/values straight into their own slots (their
absolute positions) and attends over slots [0, width) of one preallocated tensor per layer. Nothing
is concatenated or copied per step, and keeping a finished block afterwards only advances
`lengths`. Slots at or beyond a row's length hold scratch from earlier forwards until they are
overwritten; the caller's attention mask must hide them (keys at absolute positions the row's
queries may not see).
"""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's view of a `KVCache` during one forward."""

    def __init__(self, cache: "KVCache", layer: int):
        self.cache, self.layer = cache, layer

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's (B, KVH, T, D) keys/values into their slots; return the (B, KVH, width, D) views."""
        return self.cache.write(self.layer, key, value)


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self._write_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.width = 0  # key slots the current forward attends to

    @classmethod
    def for_model(cls, lm, batch: int, capacity: int) -> "KVCache":
        cfg = lm.config
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, capacity, lm.dtype, lm.device)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def begin(self, positions: torch.Tensor, valid: torch.Tensor | None) -> int:
        """Prepare a forward whose query slot (r, t) is absolute position positions[r, t] (only where
        `valid`); return the key width, the slots [0, width) every layer attends to."""
        if valid is None:
            valid = torch.ones_like(positions, dtype=torch.bool)
        rows, cols = valid.nonzero(as_tuple=True)
        slots = positions[rows, cols]
        top = int(slots.max()) + 1 if slots.numel() else 0
        if top > self.capacity:
            raise ValueError(f"query position {top - 1} is beyond the cache capacity {self.capacity}")
        self._write_index = (rows, cols, slots)
        self.width = max(top, int(self.lengths.max()) if self.lengths.numel() else 0)
        return self.width

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._write_index is None:
            raise RuntimeError("KVCache.begin() must be called before a forward writes to the cache")
        rows, cols, slots = self._write_index
        # Under autocast the keys leave the rotary embedding in float32 and the values a bf16 matmul:
        # the cache holds one dtype (the weights'), so both are stored in it.
        self.keys[layer][rows, :, slots] = key[rows, :, cols].to(self.keys[layer].dtype)
        self.values[layer][rows, :, slots] = value[rows, :, cols].to(self.values[layer].dtype)
        return self.keys[layer][:, :, :self.width], self.values[layer][:, :, :self.width]

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self, i)

    def keep(self, starts: torch.Tensor, counts: list[int]) -> None:
        """After a forward whose input began at slot `starts[r]`: keep its first `counts[r]` positions
        (their keys/values are already in place)."""
        for r, count in enumerate(counts):
            if count:
                self.lengths[r] = int(starts[r]) + count

    def truncate(self, row: int, length: int) -> None:
        """Forget slots >= length of one row (their block was edited and must be re-encoded)."""
        self.lengths[row] = min(int(self.lengths[row]), length)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop the rows of finished sequences so later forwards skip them."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.lengths = self.lengths.index_select(0, rows)
