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

Where a forward writes is a `CacheWrite`, computed from the query positions once (`plan_write`) and
reusable by every forward with the same positions: the decoder reuses it for all the steps of a
block, so the slot lookup (a host read) happens once per block, not once per forward. The lengths
are host integers for the same reason: the decoder sets them after every forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CacheWrite:
    """Where one forward's query tokens go: either one contiguous run of slots [start, start + T) for
    every row (`start` set; a plain slice copy), or the (row, query column, slot) triples of the real
    tokens (index copies). `width` is the number of leading slots the forward attends over."""

    width: int
    start: int | None = None
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    slots: torch.Tensor | None = None


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
        self.lengths = [0] * batch
        self._write: CacheWrite | None = None

    @classmethod
    def for_model(cls, lm, batch: int, capacity: int) -> "KVCache":
        cfg = lm.config
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, capacity, lm.dtype, lm.device)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def width(self) -> int:
        """Key slots the current forward attends to."""
        return self._write.width if self._write is not None else 0

    def plan_write(self, positions: torch.Tensor, valid: torch.Tensor | None, width: int | None = None,
                   indexed: bool = False) -> CacheWrite:
        """Where a forward whose query slot (r, t) is absolute position positions[r, t] (only where
        `valid`) writes. The key width is 1 + the largest written slot, or the longest kept row, or
        `width` when given (a fixed key width: every forward of a decode then has the same shapes).
        `indexed` writes through index tensors even where a slice would do, so that forwards at
        different positions differ only in tensor values (what a compiled forward needs)."""
        rows_pos = positions.tolist()
        valid_rows = valid.tolist() if valid is not None else None
        slots = [p for r, row in enumerate(rows_pos) for t, p in enumerate(row)
                 if valid_rows is None or valid_rows[r][t]]
        top = max(slots) + 1 if slots else 0
        if top > self.capacity:
            raise ValueError(f"query position {top - 1} is beyond the cache capacity {self.capacity}")
        need = max(top, max(self.lengths, default=0))
        if width is not None:
            if width < need or width > self.capacity:
                raise ValueError(f"cache width {width} must cover the slots [0, {need}) and fit the capacity "
                                 f"{self.capacity}")
            need = width
        T = positions.shape[1]
        first = rows_pos[0][0] if rows_pos and T else 0
        contiguous = (not indexed and len(rows_pos) == self.batch and (valid_rows is None or all(map(all, valid_rows)))
                      and all(row == list(range(first, first + T)) for row in rows_pos))
        if contiguous:
            return CacheWrite(width=need, start=first)
        keep = valid if valid is not None else torch.ones_like(positions, dtype=torch.bool)
        rows, cols = keep.nonzero(as_tuple=True)
        return CacheWrite(width=need, rows=rows, cols=cols, slots=positions[rows, cols])

    def begin(self, write: "CacheWrite | torch.Tensor", valid: torch.Tensor | None = None) -> int:
        """Prepare a forward: `write` is a CacheWrite (or the query positions, planned here); return the
        key width, the slots [0, width) every layer attends to."""
        if not isinstance(write, CacheWrite):
            write = self.plan_write(write, valid)
        self._write = write
        return write.width

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._write
        if w is None:
            raise RuntimeError("KVCache.begin() must be called before a forward writes to the cache")
        # Under autocast the keys leave the rotary embedding in float32 and the values a bf16 matmul:
        # the cache holds one dtype (the weights'), so both are stored in it.
        keys, values = self.keys[layer], self.values[layer]
        if key.dtype != keys.dtype:
            key, value = key.to(keys.dtype), value.to(values.dtype)
        if w.start is not None:
            end = w.start + key.shape[2]
            keys[:, :, w.start:end] = key
            values[:, :, w.start:end] = value
        else:
            keys[w.rows, :, w.slots] = key[w.rows, :, w.cols]
            values[w.rows, :, w.slots] = value[w.rows, :, w.cols]
        return keys[:, :, :w.width], values[:, :, :w.width]

    def mark_static(self) -> None:
        """Tell torch.compile that the key/value tensors keep their addresses, so that CUDA graphs may
        write into them in place instead of refusing a forward that mutates its inputs."""
        for t in self.keys + self.values:
            torch._dynamo.mark_static_address(t)

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self, i)

    def keep(self, starts: list[int], counts: list[int]) -> None:
        """After a forward whose input began at slot `starts[r]`: keep its first `counts[r]` positions
        (their keys/values are already in place)."""
        for r, count in enumerate(counts):
            if count:
                self.lengths[r] = int(starts[r]) + count

    def truncate(self, row: int, length: int) -> None:
        """Forget slots >= length of one row (their block was edited and must be re-encoded)."""
        self.lengths[row] = min(self.lengths[row], length)

    def keep_rows(self, rows: list[int]) -> None:
        """Drop the rows of finished sequences so later forwards skip them."""
        index = torch.tensor(rows, device=self.keys[0].device)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.lengths = [self.lengths[r] for r in rows]
        self._write = None
