"""Evaluation metrics: closed-form values, and shards merged (as DDP or merge_state would) equal the whole."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from components.evaluate.metrics import (
    AnswerAccuracy,
    MeanForwards,
    MeanLength,
    PassAtK,
    TokensPerForward,
    pass_at_k,
)


def _comb_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_the_combinatorial_definition():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the fraction correct
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 9, 2) == 1.0  # n - c < k: every k-subset holds a correct sample
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_comb_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_unbiased_against_subset_enumeration():
    # The estimator equals the probability that a random k-subset of the n samples has a correct one.
    import itertools

    samples = [True, False, False, True, False, False]
    n, c = len(samples), sum(samples)
    for k in (1, 2, 3):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_impossible_inputs():
    with pytest.raises(ValueError, match="at least k samples"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="positive"):
        PassAtK([0])


def test_accuracy_tpf_and_means_closed_form():
    acc = AnswerAccuracy()
    acc.update([True, False, True, True])
    assert float(acc.compute()) == pytest.approx(0.75)
    tpf = TokensPerForward()
    tpf.update([10, 2], [2, 2])  # per-sample ratios 5 and 1
    tpf.update([30], [5])  # ratio 6
    assert float(tpf.compute()) == pytest.approx(42 / 9)  # ratio of sums, as the paper's TPF
    assert float(tpf.compute()) != pytest.approx((5 + 1 + 6) / 3)  # not the mean of ratios
    fwd, length = MeanForwards(), MeanLength()
    fwd.update([2, 4, 9])
    length.update([10, 20])
    assert float(fwd.compute()) == pytest.approx(5.0) and float(length.compute()) == pytest.approx(15.0)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(AnswerAccuracy().compute()))
        assert math.isnan(float(PassAtK([1]).compute()["pass@1"]))


def _random_data(seed: int = 0):
    rng = random.Random(seed)
    correct = [rng.random() < 0.4 for _ in range(37)]
    tokens = [rng.randint(1, 64) for _ in range(37)]
    forwards = [rng.randint(1, 40) for _ in range(37)]
    problems = [(10, rng.randint(0, 10)) for _ in range(23)]
    return correct, tokens, forwards, problems


def _fill(metrics: dict, correct, tokens, forwards, problems) -> None:
    metrics["acc"].update(correct)
    metrics["tpf"].update(tokens, forwards)
    metrics["fwd"].update(forwards)
    metrics["len"].update(tokens)
    metrics["pass"].update([n for n, _ in problems], [c for _, c in problems])


def _new_metrics() -> dict:
    return {"acc": AnswerAccuracy(), "tpf": TokensPerForward(), "fwd": MeanForwards(), "len": MeanLength(),
            "pass": PassAtK([1, 5, 10])}


def _values(metrics: dict) -> dict:
    out = {}
    for name, m in metrics.items():
        v = m.compute()
        if isinstance(v, dict):
            out.update({f"{name}/{k}": float(x) for k, x in v.items()})
        else:
            out[name] = float(v)
    return out


def _shards(cut_samples: int, cut_problems: int):
    correct, tokens, forwards, problems = _random_data()
    a = (correct[:cut_samples], tokens[:cut_samples], forwards[:cut_samples], problems[:cut_problems])
    b = (correct[cut_samples:], tokens[cut_samples:], forwards[cut_samples:], problems[cut_problems:])
    return (correct, tokens, forwards, problems), a, b


def test_two_shards_merged_equal_the_whole():
    whole_data, a, b = _shards(11, 7)  # uneven shards: a plain mean of shard means would differ
    whole, left, right = _new_metrics(), _new_metrics(), _new_metrics()
    _fill(whole, *whole_data)
    _fill(left, *a)
    _fill(right, *b)
    # (on copies: torchmetrics caches compute() and merge_state does not clear that cache)
    left_vals, right_vals = _values(copy.deepcopy(left)), _values(copy.deepcopy(right))
    naive = {k: (left_vals[k] + right_vals[k]) / 2 for k in left_vals}
    assert any(naive[k] != pytest.approx(v) for k, v in _values(whole).items()), "shards must be uneven"
    for name in whole:
        left[name].merge_state(right[name])
    assert _values(left) == pytest.approx(_values(whole))


def test_every_state_is_sum_reduced_like_ddp():
    # Reproduce what the DDP sync does: apply each state's dist_reduce_fx across the shards' states.
    whole_data, a, b = _shards(20, 3)
    whole, left, right = _new_metrics(), _new_metrics(), _new_metrics()
    _fill(whole, *whole_data)
    _fill(left, *a)
    _fill(right, *b)
    for name, metric in left.items():
        other = right[name]
        for state, reduce_fx in metric._reductions.items():
            assert reduce_fx is not None, f"{name}.{state} has no dist_reduce_fx: it would not merge across processes"
            stacked = torch.stack([getattr(metric, state), getattr(other, state)])  # (2, ...)
            setattr(metric, state, reduce_fx(stacked))
    assert _values(left) == pytest.approx(_values(whole))


def _worker(rank: int, world: int, store: str, queue) -> None:
    torch.set_num_threads(1)
    # A file rendezvous: no port to pick, so nothing another process can take first.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        whole_data, a, b = _shards(15, 9)
        metrics = _new_metrics()
        _fill(metrics, *(a if rank == 0 else b))
        values = _values(metrics)  # compute() all-reduces the states across the two processes
        if rank == 0:
            queue.put(values)
    finally:
        dist.destroy_process_group()


def test_metrics_sync_across_two_real_processes(tmp_path):
    whole_data, _, _ = _shards(15, 9)
    expected = _new_metrics()
    _fill(expected, *whole_data)
    ctx = mp.get_context("fork")  # no re-import of torch in the children: seconds instead of tens
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tmp_path / "store"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = queue.get(timeout=120)
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert got == pytest.approx(_values(expected))
