"""Where a decode's time goes on a checkpoint: our decoder vs the reference loop on the same prompts,
and per network call the time inside the network, the decoder's own time, and its host reads.

    python -m benchmarks.overhead --model outputs/sft/model --task sort16 --prompts 16 \\
        --batch 1 16 --presets quality speedy --repeats 3 --threads 1 --json overhead.json

For every preset, every row decodes the same prompts (the first `--prompts` of the task, encoded as
the benchmark stage encodes them, with the task's decode overrides): the reference loop
(components.bench.baselines.reference_generate, one prompt at a time, no cache, the benchmark stage's
reference settings) and our decoder at each `--batch`. Timed passes are interleaved round-robin over
the rows, so load from other processes hits every row alike; TPS and TPF are mean ± sd over them.

Then, per row, untimed-for-TPS passes give the profile:
  * network vs decoder: every call of `lm.forward` is timed (the device synchronised before and after
    on CUDA, so the time covers its kernels); `overhead = wall - network` is everything else the
    decode does (canvas updates, threshold and edit selection, masks, host-side control flow), both
    also per network call;
  * host reads: a TorchFunctionMode counts, per network call, the calls that read tensor values into
    Python -- `item`, `bool()`, `int()`, `float()`, `index`, `tolist`, `numpy`, `.cpu()` / `.to("cpu")`
    -- and the calls whose output shape depends on tensor values (`nonzero`, boolean-mask indexing and
    assignment, `masked_select`): on CUDA each of them waits for the GPU. It counts them on any device,
    split into the decoder's and those inside the network's forward (KV-cache slot lookup, token
    packing, MoE dispatch). On CPU a host read of a CPU tensor costs no device wait but still a
    dispatcher round trip and a Python branch; on CUDA, where the canvas lives on the host, not every
    read is a sync, so the recipe also counts the syncs CUDA itself reports (torch.cuda.set_sync_debug_mode).
  * `--cprofile N`: the N functions of the decoder's modules (model/decoding.py, cache.py, sampling.py,
    masks.py; the reference loop's module) with the most own time in one more pass (cProfile), naming
    the bookkeeping that costs most.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import dataclasses
import io
import json
import pstats
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode

from benchmarks.common import load_checkpoint, spread_cell
from benchmarks.speed import machine_line, run_reference
from components.bench.measure import sync_device

HOST_READS = frozenset({"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu"})
SHAPE_SYNCS = frozenset({"nonzero", "masked_select", "argwhere", "unique", "nonzero_static"})
DECODER_FILES = ("model/decoding.py", "model/cache.py", "model/sampling.py", "model/masks.py",
                 "components/bench/baselines.py")


class ForwardTimer:
    """Times every call of `lm.forward` (an instance attribute shadowing the method while active);
    `inside` is true during a call, so other counters can tell the network's work from the decoder's."""

    def __init__(self, lm, synchronise: bool = True):
        self.lm, self.synchronise = lm, synchronise
        self.seconds: list[float] = []
        self.inside = False

    def __enter__(self) -> "ForwardTimer":
        forward = self.lm.forward

        def timed(*args, **kwargs):
            if self.synchronise:
                sync_device(self.lm.device)
            self.inside = True
            start = time.perf_counter()
            try:
                out = forward(*args, **kwargs)
                if self.synchronise:
                    sync_device(self.lm.device)
            finally:
                self.seconds.append(time.perf_counter() - start)
                self.inside = False
            return out

        self.lm.forward = timed
        return self

    def __exit__(self, *exc) -> None:
        del self.lm.forward  # the class's method again


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostReadCounter(TorchFunctionMode):
    """Counts host reads and value-dependent shapes (see the module docstring), by op, split by whether
    `timer.inside` (the network's forward) was set."""

    def __init__(self, timer: ForwardTimer):
        super().__init__()
        self.timer = timer
        self.decoder: collections.Counter = collections.Counter()
        self.network: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "to":
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            name = "cpu" if str(target).startswith("cpu") else name
        if name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_bool_index(args[1]):
            name = f"{name}[bool]"
        if name in HOST_READS or name in SHAPE_SYNCS or name.endswith("[bool]"):
            (self.network if self.timer.inside else self.decoder)[name] += 1
        return func(*args, **kwargs)


def cuda_syncs(fn: Callable[[], object], device: torch.device) -> int | None:
    """Synchronisations CUDA reports while `fn` runs (one warning each); None off CUDA."""
    if device.type != "cuda":
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def top_functions(fn: Callable[[], object], n: int) -> list[dict]:
    """The `n` functions of the decoders' own modules (DECODER_FILES) with the most own time while `fn`
    runs (cProfile), as file:line:function. The torch calls they make count in their callers' cumulative
    time only, and the network's layers are left out: this ranks the bookkeeping."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof, stream=io.StringIO())
    ours = [kv for kv in stats.stats.items() if Path(kv[0][0]).as_posix().endswith(DECODER_FILES)]
    rows = sorted(ours, key=lambda kv: kv[1][2], reverse=True)[:n]  # (cc, nc, tottime, cumtime, callers)
    return [{"function": f"{Path(file).name}:{line}:{func}", "calls": nc, "own_s": tt, "cum_s": ct}
            for (file, line, func), (cc, nc, tt, ct, _) in rows]


@dataclasses.dataclass
class Row:
    """One decoder at one (preset, batch) on the prompts, with what its passes measured."""

    preset: str
    decoder: str  # "ours" | "ours compiled" | "reference"
    batch: int
    run: Callable[[], object]  # -> GenerationResult
    walls: list[float] = dataclasses.field(default_factory=list)
    result: object = None

    @property
    def name(self) -> str:
        if self.decoder == "reference":
            return f"{self.preset} reference"
        return f"{self.preset} b{self.batch}" + (" compiled" if self.decoder == "ours compiled" else "")


def make_rows(lm, prompts: list[list[int]], presets: list[str], batches: list[int], overrides: dict,
              compiled: bool = False) -> list[Row]:
    from components.presets import load_decode_config
    from model import generate

    rows = []
    for preset in presets:
        cfg = load_decode_config(preset, overrides)
        # The benchmark stage's reference settings (components.bench.runner.make_plans).
        ref = dataclasses.replace(cfg, use_cache=False, max_batch_size=1, speculative_verify=False, mbe_window=0,
                                  temperature=0.0)
        rows.append(Row(preset, "reference", 1, lambda ref=ref: run_reference(lm, prompts, ref)))
        for b in batches:
            ours = dataclasses.replace(cfg, max_batch_size=b, use_cache=True)
            rows.append(Row(preset, "ours", b, lambda ours=ours: generate(lm, prompts, ours)))
            if compiled:  # the same decode with the network's steady steps through torch.compile
                fast = dataclasses.replace(ours, compile=True)
                rows.append(Row(preset, "ours compiled", b, lambda fast=fast: generate(lm, prompts, fast)))
    return rows


def profile_row(row: Row, lm, top: int) -> dict | None:
    """Network vs decoder time and host reads of one more pass each (see the module docstring); None for
    a compiled row, whose compiled forward the timer cannot wrap."""
    if row.decoder == "ours compiled":
        return None
    with ForwardTimer(lm) as timer:
        sync_device(lm.device)
        start = time.perf_counter()
        row.run()
        sync_device(lm.device)
        wall = time.perf_counter() - start
    calls = len(timer.seconds)
    network = sum(timer.seconds)
    with ForwardTimer(lm, synchronise=False) as counting, HostReadCounter(counting) as counter:
        row.run()
    with ForwardTimer(lm, synchronise=False) as counting:
        syncs = cuda_syncs(row.run, lm.device)
    out = {"wall_s": wall, "network_s": network, "overhead_s": wall - network, "network_calls": calls,
           "network_ms_per_call": 1000 * network / calls, "overhead_ms_per_call": 1000 * (wall - network) / calls,
           "overhead_fraction": (wall - network) / wall,
           "host_reads_per_call": sum(counter.decoder.values()) / calls,
           "network_host_reads_per_call": sum(counter.network.values()) / calls,
           "host_reads_by_op": dict(counter.decoder.most_common()),
           "network_host_reads_by_op": dict(counter.network.most_common()),
           "cuda_syncs_per_call": None if syncs is None else syncs / calls}
    if top:
        out["top_functions"] = top_functions(row.run, top)
    return out


def measure(lm, prompts: list[list[int]], args, overrides: dict) -> list[dict]:
    rows = make_rows(lm, prompts, args.presets, args.batch, overrides, args.compile)
    for row in rows:  # warm-up: every code path once (and every compilation), excluded
        for _ in range(args.warmup):
            row.run()
    for _ in range(args.repeats):
        for row in rows:
            sync_device(lm.device)
            start = time.perf_counter()
            res = row.run()
            sync_device(lm.device)
            row.walls.append(time.perf_counter() - start)
            if row.result is None:
                row.result = res
            elif res.sequences != row.result.sequences:
                raise SystemExit(f"{row.name}: repeats decoded different tokens (greedy presets are deterministic)")
    records = []
    reference = {}
    for row in rows:
        res = row.result
        forwards = sum(res.forwards)
        tps = [res.num_tokens / w for w in row.walls]
        tpf = [res.tokens_per_forward] * len(row.walls)  # greedy: every repeat takes the same forwards
        rec = {"name": row.name, "preset": row.preset, "decoder": row.decoder, "batch": row.batch,
               "prompts": len(prompts), "tokens": res.num_tokens, "forwards": forwards,
               "network_calls": res.forward_calls, "tps_mean": statistics.mean(tps),
               "tps_sd": statistics.stdev(tps) if len(tps) > 1 else 0.0, "tps_all": tps,
               "tpf_mean": statistics.mean(tpf), "tpf_sd": statistics.stdev(tpf) if len(tpf) > 1 else 0.0,
               "wall_s_all": row.walls}
        if row.decoder == "reference":
            reference[row.preset] = (rec, res)
        ref_rec, ref_res = reference[row.preset]
        rec["x_reference"] = rec["tps_mean"] / ref_rec["tps_mean"]
        rec["same_tokens_as_reference"] = res.sequences == ref_res.sequences
        rec["profile"] = profile_row(row, lm, args.cprofile)
        records.append(rec)
        print_row(rec, tps, len(records) == 1)
    return records


def print_row(rec: dict, tps: list[float], header: bool) -> None:
    if header:
        print("\n| row | TPS (mean ± sd) | TPF | x ref | same tokens as ref | network calls | ms/call network | "
              "ms/call decoder | decoder share | host reads/call decoder | in network | CUDA syncs/call |\n"
              + "|---" * 12 + "|")
    p = rec["profile"]
    head = (f"| {rec['name']} | {spread_cell(tps, '.0f', 'sd')} | {rec['tpf_mean']:.2f} | {rec['x_reference']:.2f} | "
            f"{rec['same_tokens_as_reference']} | {rec['network_calls']} |")
    if p is None:
        print(head + " - | - | - | - | - | - |", flush=True)
        return
    syncs = "-" if p["cuda_syncs_per_call"] is None else f"{p['cuda_syncs_per_call']:.1f}"
    print(head + f" {p['network_ms_per_call']:.3f} | {p['overhead_ms_per_call']:.3f} | "
          f"{100 * p['overhead_fraction']:.0f}% | {p['host_reads_per_call']:.1f} | "
          f"{p['network_host_reads_per_call']:.1f} | {syncs} |", flush=True)


def print_details(records: list[dict]) -> None:
    for rec in records:
        p = rec["profile"]
        if p is None:
            continue
        print(f"\n{rec['name']}: decoder host reads by op (per call) "
              + ", ".join(f"{op} {n / p['network_calls']:.1f}" for op, n in p["host_reads_by_op"].items())
              + "; in network " + (", ".join(f"{op} {n / p['network_calls']:.1f}"
                                            for op, n in p["network_host_reads_by_op"].items()) or "none"))
        for f in p.get("top_functions", []):
            print(f"    {f['own_s'] * 1000:8.1f} ms own {f['cum_s'] * 1000:8.1f} ms cum {f['calls']:7d} calls  "
                  f"{f['function']}")


def load_prompts(model_dir: Path, lm, task: str, count: int) -> tuple[list[list[int]], dict]:
    """The task's first `count` prompts as the benchmark stage encodes them, and its decode overrides."""
    from components.bench.config import PromptSetConfig
    from components.bench.prompts import load_prompt_set

    cfg = PromptSetConfig(task=task, task_overrides=[], num_prompts=count, tokenizer=None, use_task_decode=True,
                          random_min_length=0, random_max_length=0, seed=0)
    prompts = load_prompt_set(cfg, model_dir, lm.config.vocab_size, lm.config.mask_token_id)
    return prompts.ids, prompts.decode_overrides


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder (with tokenizer.json)")
    p.add_argument("--task", default="sort16", help="task in conf/task/ whose prompts are decoded")
    p.add_argument("--prompts", type=int, default=16, help="the task's first N prompts, for every row")
    p.add_argument("--presets", nargs="+", default=["quality", "speedy"], help="decoding presets in conf/decode/")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="our decoder's batch sizes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="DecodeConfig override of every row, repeatable (after the task's)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per row first")
    p.add_argument("--cprofile", type=int, default=0, metavar="N", help="print the N functions with most own time")
    p.add_argument("--compile", action="store_true",
                   help="also a row per batch with DecodeConfig.compile (its compilation is in the warm-up)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p


def main(argv=None) -> int:
    from benchmarks.common import decode_overrides
    from components.bench.machine import describe_machine
    from model.files import atomic_write

    ap = parser()
    args = ap.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        lm, _ = load_checkpoint(args.model)
        lm = lm.to(args.device)
        prompts, overrides = load_prompts(args.model, lm, args.task, args.prompts)
        overrides = {**overrides, **decode_overrides(args.overrides, ap)}
        print(machine_line())
        print(f"# model {args.model}: {lm.num_parameters() / 1e6:.2f}M params ({lm.config.num_experts} experts), "
              f"{lm.dtype}, {lm.device}; task {args.task}: {len(prompts)} prompts of "
              f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, overrides {overrides}; "
              f"{args.repeats} timed repeats")
        records = measure(lm, prompts, args, overrides)
        print_details(records)
    finally:
        torch.set_num_threads(previous)
    if args.json:
        record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "machine": describe_machine(torch.device(args.device)), "rows": records}
        atomic_write(args.json, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
