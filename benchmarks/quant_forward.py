"""One network forward per precision on this CPU: is the int8 path actually faster than fp32?

Times `lm(ids)` for the ~29M-parameter model of decode_speed.py in fp32, bf16 and each int8 scheme
of components/quantize, at the shapes decoding uses (one block of 32 tokens with a KV cache at
batch 1 and 8, and a 256-token window as the reference loop re-encodes). Medians over interleaved
repeats after a warm-up; also the largest logit difference from fp32.

    taskset -c 0 .venv/bin/python benchmarks/quant_forward.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.bench.machine import describe_machine  # noqa: E402
from components.quantize import apply_int8, round_to_fp8  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import decode_speed

    ns = argparse.Namespace(vocab=4096, hidden=512, intermediate=1536, layers=8, heads=8, kv_heads=4, head_dim=64,
                            seed=0, init="peaked", head_scale=3.0)
    base = decode_speed.build_model(ns)
    variants = {"fp32": base, "bf16": copy.deepcopy(base).to(torch.bfloat16)}
    fp8 = copy.deepcopy(base)
    round_to_fp8(fp8)
    variants["fp8 (dequantized, fp32 kernels)"] = fp8
    for scheme in ("int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm"):
        converted = copy.deepcopy(base)
        apply_int8(converted, scheme)
        variants[scheme] = converted
    shapes = [(1, 32), (8, 32), (1, 256)]
    g = torch.Generator().manual_seed(0)
    inputs = {s: torch.randint(0, 4000, s, generator=g) for s in shapes}
    times = {(v, s): [] for v in variants for s in shapes}
    m = describe_machine()
    print(f"# {m['cpu']} | torch {m['torch']} | torchao {m['torchao']} | threads {torch.get_num_threads()} | "
          f"load avg {m['load_average']} | {base.num_parameters() / 1e6:.1f}M params")
    with torch.no_grad():
        ref = {s: base(inputs[s]).logits for s in shapes}
        diffs = {v: max((lm(inputs[s]).logits.float() - ref[s]).abs().max().item() for s in shapes)
                 for v, lm in variants.items()}
        for _ in range(args.repeats):
            for v, lm in variants.items():
                for s in shapes:
                    t = time.perf_counter()
                    lm(inputs[s])
                    times[(v, s)].append(time.perf_counter() - t)
    print("| precision | " + " | ".join(f"B={b}, T={t} ms" for b, t in shapes) + " | x fp32 (B=1,T=32) | "
          "x fp32 (B=8,T=32) | max |logit diff| |")
    print("|---" * (len(shapes) + 4) + "|")
    med = {k: statistics.median(v[1:]) * 1000 for k, v in times.items()}  # first repeat = warm-up
    for v in variants:
        cells = " | ".join(f"{med[(v, s)]:.1f}" for s in shapes)
        print(f"| {v} | {cells} | {med[('fp32', shapes[0])] / med[(v, shapes[0])]:.2f} | "
              f"{med[('fp32', shapes[1])] / med[(v, shapes[1])]:.2f} | {diffs[v]:.3g} |")
    print(f"# load avg at end {describe_machine()['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
