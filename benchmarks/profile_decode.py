"""Where decoding time goes: network forward vs decoder bookkeeping, and tokens computed per forward.

Same model and prompts as decode_speed.py. For each variant (batch 1 / batch 8, speculative
verification off / on) it times every network call, records the input shape (rows x query length),
and reports: wall time, time inside the network, time outside it (the decoder's own Python work),
forwards, tokens the network computed (rows x query length, padding included) per generated token.

    taskset -c 0 .venv/bin/python benchmarks/profile_decode.py --threads 1
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import decode_speed  # noqa: E402
from components.bench.machine import describe_machine  # noqa: E402
from components.presets import load_decode_config  # noqa: E402
from model import generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="speedy")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(vocab=4096, hidden=512, intermediate=1536, layers=8, heads=8, kv_heads=4, head_dim=64,
                            seed=0, init="peaked", head_scale=3.0, prompts=args.prompts, min_prompt=8, max_prompt=40)
    lm = decode_speed.build_model(ns)
    prompts = decode_speed.make_prompts(ns, ns.vocab)
    base = load_decode_config(args.preset, gen_length=args.gen_length, block_length=32)

    calls: list[tuple[int, int, float]] = []
    forward = lm.forward

    def timed(input_ids, *a, **k):
        start = time.perf_counter()
        out = forward(input_ids, *a, **k)
        calls.append((input_ids.shape[0], input_ids.shape[1], time.perf_counter() - start))
        return out

    lm.forward = timed
    m = describe_machine()
    print(f"# {m['cpu']} | torch {m['torch']} | threads {torch.get_num_threads()} | load avg {m['load_average']}")
    generate(lm, prompts[:2], dataclasses.replace(base, gen_length=32))  # warm-up
    print("| variant | wall s | in network s | outside s | network calls | mean rows x q_len | "
          "computed tokens / generated token | q_len histogram |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        for spec in (False, True):
            calls.clear()
            cfg = dataclasses.replace(base, max_batch_size=batch, speculative_verify=spec)
            start = time.perf_counter()
            res = generate(lm, prompts, cfg)
            wall = time.perf_counter() - start
            inside = sum(c[2] for c in calls)
            computed = sum(r * q for r, q, _ in calls)
            hist = collections.Counter(q for _, q, _ in calls)
            mean_shape = f"{sum(r for r, _, _ in calls) / len(calls):.1f} x {sum(q for _, q, _ in calls) / len(calls):.1f}"
            print(f"| batch {batch}, speculative {'on' if spec else 'off'} | {wall:.1f} | {inside:.1f} | "
                  f"{wall - inside:.1f} | {len(calls)} | {mean_shape} | {computed / res.num_tokens:.2f} | "
                  f"{dict(sorted(hist.items()))} |", flush=True)
    print(f"# load avg at end {describe_machine()['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
