"""Feeding prepared rows to Lightning: a step-indexed batch sampler (exact resume) and the data module.

Batch k of a run is a pure function of (seed, k): the rows are an endless stream of seeded
permutations of the dataset, global batch k takes stream positions [k·G, (k+1)·G) with
G = batch_size × world size, and each rank takes its slice. Resuming at optimizer step s therefore
starts the sampler at batch s × accumulate_grad_batches and replays nothing and skips nothing.
"""

from __future__ import annotations

import itertools

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


class StepBatchSampler(Sampler[list[int]]):
    """Endless batches of dataset indices, starting at batch `start` (no `__len__`: it never ends)."""

    def __init__(self, num_rows: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if num_rows < 1:
            raise ValueError("StepBatchSampler: the dataset is empty")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self._perm: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            if len(self._perm) > 2:
                self._perm.clear()
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perm[epoch] = torch.randperm(self.num_rows, generator=g)
        return self._perm[epoch]

    def batch(self, k: int) -> list[int]:
        """This rank's indices of global batch k."""
        first = (k * self.world_size + self.rank) * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, i = divmod(pos, self.num_rows)
            out.append(int(self._permutation(epoch)[i]))
        return out

    def __iter__(self):
        for k in itertools.count(self.start):
            yield self.batch(k)


def split_validation(dataset: Dataset, fraction: float, max_rows: int, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out a seeded random subset of rows for validation (None when fraction is 0)."""
    n = len(dataset)
    n_val = min(max_rows, int(round(fraction * n))) if fraction > 0 else 0
    if fraction > 0:
        n_val = max(1, n_val)
    if n - n_val < 1:
        raise ValueError(f"train.data.val_fraction={fraction}: the dataset has {n} row(s), none left to train on")
    if n_val == 0:
        return dataset, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(perm[n_val:])), Subset(dataset, sorted(perm[:n_val]))


class TrainingData(L.LightningDataModule):
    """Train/validation loaders over prepared rows; the train sampler starts where the run stands."""

    def __init__(self, train: Dataset, val: Dataset | None, collate, *, batch_size: int, seed: int,
                 accumulate_grad_batches: int = 1, num_workers: int = 0):
        super().__init__()
        self.train, self.val, self.collate = train, val, collate
        self.batch_size, self.seed, self.accumulate = batch_size, seed, accumulate_grad_batches
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = trainer.global_step * self.accumulate if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        sampler = StepBatchSampler(len(self.train), self.batch_size, seed=self.seed, start=start, rank=rank,
                                   world_size=world)
        return DataLoader(self.train, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        if self.val is None:
            return []
        return DataLoader(self.val, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate,
                          num_workers=self.num_workers)
