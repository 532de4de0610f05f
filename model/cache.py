"""An explicit key/value cache for finished blocks, passed to `DiffusionLM.forward`.

Slot j of row r holds the keys/values of absolute position j of that row's sequence, so rows of
different lengths share one tensor; `lengths[r]` says how many leading slots of row r are valid.
Only finished (frozen) blocks are stored: under the block-causal mask they never change.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)

    @classmethod
    def for_model(cls, lm, batch: int, capacity: int) -> "KVCache":
        cfg = lm.config
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, capacity, lm.dtype, lm.device)

    @property
    def length(self) -> int:
        """Slots every forward attends to (the longest row); shorter rows mask the rest."""
        return int(self.lengths.max()) if self.lengths.numel() else 0

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.length
        return self.keys[i][:, :, :n], self.values[i][:, :, :n]

    def valid(self) -> torch.Tensor:
        """bool (B, length): which slots hold real keys."""
        return torch.arange(self.length, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def store(self, key_values: list[tuple[torch.Tensor, torch.Tensor]], starts: torch.Tensor,
              counts: list[int]) -> None:
        """Append `counts[r]` new positions per row from a forward whose input began at slot `starts[r]`.

        key_values[l] = (k, v), each (B, KVH, T, D), as returned by `forward(..., return_key_values=True)`;
        the first `counts[r]` input tokens of row r are written at slots starts[r] .. starts[r]+counts[r].
        """
        for r, count in enumerate(counts):
            if count == 0:
                continue
            start = int(starts[r])
            for layer, (k, v) in enumerate(key_values):
                self.keys[layer][r, :, start:start + count] = k[r, :, :count]
                self.values[layer][r, :, start:start + count] = v[r, :, :count]
            self.lengths[r] = start + count

    def truncate(self, row: int, length: int) -> None:
        """Forget slots >= length of one row (their block was edited and must be re-encoded)."""
        self.lengths[row] = min(int(self.lengths[row]), length)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop the rows of finished sequences so later forwards skip them."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.lengths = self.lengths.index_select(0, rows)
