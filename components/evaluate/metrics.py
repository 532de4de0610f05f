"""Evaluation metrics as torchmetrics `Metric`s, so shards computed on several processes merge.

Every state is a sum (`dist_reduce_fx="sum"`): merging shards, whether by DDP's all-reduce or by
`merge_state`, gives exactly the metric of the whole set. For pass@k this holds because the
estimator is computed per problem; a problem's samples must therefore stay on one shard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k), computed as a
    stable product. n samples, c of them correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


class AnswerAccuracy(Metric):
    """Fraction of samples judged correct."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Sequence[bool] | torch.Tensor) -> None:
        correct = torch.as_tensor(correct, dtype=torch.bool).reshape(-1)  # (N,)
        self.correct += correct.sum()
        self.total += correct.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.double() / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class PassAtK(Metric):
    """Mean over problems of the unbiased pass@k estimate, for every k in `ks`.

    `update(num_samples, num_correct)` takes one entry per problem; `compute()` returns a dict
    {"pass@1": ..., "pass@10": ...}.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (1,), **kwargs) -> None:
        super().__init__(**kwargs)
        ks = [int(k) for k in ks]
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"PassAtK needs positive ks, got {ks}")
        self.ks = ks
        self.add_state("estimate_sum", default=torch.zeros(len(ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("problems", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, num_samples: Sequence[int] | torch.Tensor, num_correct: Sequence[int] | torch.Tensor) -> None:
        n = torch.as_tensor(num_samples).reshape(-1).tolist()  # (P,)
        c = torch.as_tensor(num_correct).reshape(-1).tolist()  # (P,)
        if len(n) != len(c):
            raise ValueError(f"PassAtK.update: {len(n)} sample counts but {len(c)} correct counts")
        est = torch.tensor([[pass_at_k(int(ni), int(ci), k) for k in self.ks] for ni, ci in zip(n, c)],
                           dtype=torch.float64).reshape(len(n), len(self.ks))  # (P, K)
        self.estimate_sum += est.sum(dim=0).to(self.estimate_sum.device)
        self.problems += len(n)

    def compute(self) -> dict[str, torch.Tensor]:
        if self.problems == 0:
            return {f"pass@{k}": torch.tensor(float("nan"), dtype=torch.float64) for k in self.ks}
        mean = self.estimate_sum / self.problems  # (K,)
        return {f"pass@{k}": mean[i] for i, k in enumerate(self.ks)}


class TokensPerForward(Metric):
    """TPF as the paper reports it: all generated tokens over all forwards (a ratio of sums, so a
    long answer weighs in proportion to its length rather than as one per-sample ratio)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("forwards", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, tokens: Sequence[int] | torch.Tensor, forwards: Sequence[int] | torch.Tensor) -> None:
        self.tokens += torch.as_tensor(tokens, dtype=torch.long).sum()
        self.forwards += torch.as_tensor(forwards, dtype=torch.long).sum()

    def compute(self) -> torch.Tensor:
        if self.forwards == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.tokens.double() / self.forwards


class MeanValue(Metric):
    """Plain mean of per-sample values (forwards per sample, generated length)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Sequence[float] | torch.Tensor) -> None:
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)  # (N,)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class MeanForwards(MeanValue):
    """Mean number of network forwards each sample took part in."""

    higher_is_better = False


class MeanLength(MeanValue):
    """Mean number of generated tokens per sample (EOS included, as the decoder cuts it)."""
