"""Decoder speed on one set of weights (issue 2, item 4).

Decodes the same prompts with
  (a)  the reference-style loop: batch of one, no cache, whole prefix re-encoded every step
       (components.bench.baselines.reference_generate, an independent re-implementation);
  (b0) our `generate`, KV cache, batch 1, speculative verification off (same forwards as (a));
  (b)  our `generate`, KV cache, batch 1, the preset as configured;
  (c0) our `generate`, KV cache, batch 8, speculative verification off;
  (c)  our `generate`, KV cache, batch 8 (prompts of different lengths, each at its own pace);
checks that all outputs are token-identical (greedy), and prints TPS, TPF, forwards and ratios,
medians over repeats (warm-up excluded; repeats interleaved so contention hits every variant alike).
Last, the matmul floor: every linear layer of the network timed alone at one row's block of tokens
and at `--batch` rows' worth, which bounds what batching can gain on this machine (on a CPU whose
batch-1 forward is already mostly matmul, the bound is far below a GPU's).

    .venv/bin/python benchmarks/decode_speed.py --threads 1 --repeats 3
    taskset -c 0 .venv/bin/python benchmarks/decode_speed.py --threads 1   # pin to one core

The model is a randomly initialised dense LLaDA2-layout network (default ~29M parameters: hidden 512,
8 layers, vocab 4096). `--init peaked` draws weights like the golden fixtures (N(0, 1/fan_in), a
sharper output head) so that drafting commits several tokens per forward, as a trained model does;
`--init default` keeps the near-uniform outputs of a fresh model (one token per forward).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.bench.baselines import reference_generate  # noqa: E402
from components.bench.machine import describe_machine  # noqa: E402
from components.presets import load_decode_config  # noqa: E402
from model import DiffusionLM, GenerationResult, ModelConfig, generate  # noqa: E402
from model.files import atomic_write  # noqa: E402


def build_model(args) -> DiffusionLM:
    cfg = ModelConfig.tiny(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                           num_hidden_layers=args.layers, num_attention_heads=args.heads,
                           num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                           max_position_embeddings=4096, mask_token_id=args.vocab - 1, eos_token_id=args.vocab - 2,
                           pad_token_id=args.vocab - 2)
    torch.manual_seed(args.seed)
    lm = DiffusionLM(cfg)
    if args.init == "peaked":
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if p.dim() == 2 and "embeddings" not in name:
                    p.normal_(0.0, p.shape[1] ** -0.5)
            lm.lm_head.weight.mul_(args.head_scale)
    with torch.no_grad():
        lm.lm_head.weight[cfg.mask_token_id].zero_()  # as in the golden fixtures: never predict the mask
    return lm.eval()


def make_prompts(args, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(args.min_prompt, args.max_prompt + 1, (args.prompts,), generator=g).tolist()
    return [torch.randint(0, vocab - 2, (n,), generator=g).tolist() for n in lengths]


def gemm_floor_ms(lm, tokens: int, repeats: int = 30) -> float:
    """Median time of one pass of every linear layer of the network at `tokens` input rows.

    A decoding forward of a block runs each of these once on its query tokens (block_length per
    row), so this is the matmul work no decoder can avoid: the floor under one forward's time. The
    linears run alone here, on the same weights and dtype, so the figure is this machine's GEMM rate
    at that size.
    """
    linears = [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(tokens, m.in_features, dtype=lm.dtype, device=lm.device) for m in linears]
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            _sync(lm.device)
            t = time.perf_counter()
            for m, x in zip(linears, inputs):
                m(x)
            _sync(lm.device)
            if i >= 3:  # warm-up passes excluded
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_roofline(lm, args, by: dict, b_name: str, c_name: str) -> dict:
    """How far batching can go on this machine: compare each variant's time per forward with the
    time its matmuls alone need (measured here, now, on the same weights)."""
    block = args.block_length
    floor_1 = gemm_floor_ms(lm, block)
    floor_b = gemm_floor_ms(lm, block * args.batch)
    b, c = by[b_name], by[c_name]
    ms_b = 1000 * b["wall_s_median"] / b["network_calls"]  # one row per call
    ms_c_row = 1000 * c["wall_s_median"] / c["forwards"]  # per row-forward
    bound = ms_b / (floor_b / args.batch)
    print("\nmatmul floor (every linear layer once, same weights and dtype, median of 30):")
    print(f"  {block} tokens (one row's block): {floor_1:.2f} ms  | (b) spends {ms_b:.2f} ms per forward "
          f"({100 * floor_1 / ms_b:.0f}% in matmuls at best)")
    print(f"  {block * args.batch} tokens ({args.batch} rows): {floor_b:.2f} ms = {floor_b / args.batch:.2f} ms per row "
          f"| {c_name} spends {ms_c_row:.2f} ms per row-forward")
    print(f"  GEMM rate gain from batching alone: {args.batch * floor_1 / floor_b:.2f}x; best possible "
          f"batch-{args.batch} / batch-1 TPS ratio with zero non-matmul cost at batch {args.batch}: {bound:.2f}x "
          f"(measured: {c['tps'] / b['tps']:.2f}x)")
    return {"floor_ms_batch1": floor_1, "floor_ms_batched": floor_b, "ms_per_forward_b": ms_b,
            "ms_per_row_forward_c": ms_c_row, "best_possible_ratio": bound, "measured_ratio": c["tps"] / b["tps"]}


def run_reference(lm, prompts, cfg) -> GenerationResult:
    results = [reference_generate(lm, p, cfg) for p in prompts]
    return GenerationResult(sequences=[r.sequences[0] for r in results], forwards=[r.forwards[0] for r in results],
                            edits=[r.edits[0] for r in results], commits=[r.commits[0] for r in results],
                            canvases=[r.canvases[0] for r in results],
                            forward_calls=sum(r.forward_calls for r in results),
                            wall_seconds=sum(r.wall_seconds for r in results))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="speedy", help="decoding preset in conf/decode (speedy | quality)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-prompt", type=int, default=8)
    ap.add_argument("--max-prompt", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of (b0), (b), (c)")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed repeats of (a) (the slow loop)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--init", choices=["default", "peaked"], default="peaked")
    ap.add_argument("--head-scale", type=float, default=3.0, help="--init peaked: output head scale")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true", help="only (b0), (b), (c)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    lm = build_model(args).to(device=args.device, dtype=getattr(torch, args.dtype))
    prompts = make_prompts(args, lm.config.vocab_size)
    base = load_decode_config(args.preset, gen_length=args.gen_length, block_length=args.block_length)
    variants = {
        "(b0) cache, batch 1, no spec": (lambda: generate(lm, prompts, _with(base, max_batch_size=1,
                                                                          speculative_verify=False))),
        "(b) cache, batch 1": (lambda: generate(lm, prompts, _with(base, max_batch_size=1))),
        f"(c0) cache, batch {args.batch}, no spec": (lambda: generate(lm, prompts, _with(
            base, max_batch_size=args.batch, speculative_verify=False))),
        f"(c) cache, batch {args.batch}": (lambda: generate(lm, prompts, _with(base, max_batch_size=args.batch))),
    }
    ref_cfg = _with(base, use_cache=False, max_batch_size=1, speculative_verify=False)
    if not args.skip_reference:
        variants = {"(a) reference loop": (lambda: run_reference(lm, prompts, ref_cfg)), **variants}

    machine = describe_machine()
    print(f"# {machine['cpu']} | torch {machine['torch']} | threads {torch.get_num_threads()} | "
          f"affinity {machine['cpu_affinity']} | load avg {machine['load_average']}")
    print(f"# model: {lm.num_parameters() / 1e6:.1f}M params ({args.init} init, {args.dtype}); "
          f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens; preset {args.preset} "
          f"(threshold {base.threshold}, editing {base.editing_threshold}, eos_early_stop {base.eos_early_stop}); "
          f"gen {args.gen_length}, block {args.block_length}")
    # Warm-up (excluded): one short decode through each code path.
    warm = _with(base, gen_length=args.block_length)
    generate(lm, prompts[:2], warm)
    reference_generate(lm, prompts[0], _with(warm, use_cache=False))

    walls: dict[str, list[float]] = {k: [] for k in variants}
    last: dict[str, GenerationResult] = {}
    for rep in range(max(args.repeats, args.ref_repeats)):
        for name, fn in variants.items():
            limit = args.ref_repeats if name.startswith("(a)") else args.repeats
            if rep >= limit:
                continue
            t = time.perf_counter()
            res = fn()
            walls[name].append(time.perf_counter() - t)
            if name in last and last[name].sequences != res.sequences:
                print(f"!! {name}: outputs changed between repeats")
            last[name] = res
            print(f"  repeat {rep}: {name}: {walls[name][-1]:.2f} s", flush=True)

    ref_name = next(iter(last))
    reference = last[ref_name]
    agree = {name: res.sequences == reference.sequences for name, res in last.items()}
    rows = []
    for name, res in last.items():
        wall = statistics.median(walls[name])
        rows.append({"variant": name, "tokens": res.num_tokens, "forwards": sum(res.forwards),
                     "network_calls": res.forward_calls, "tpf": res.tokens_per_forward,
                     "wall_s_median": wall, "wall_s_all": walls[name], "tps": res.num_tokens / wall,
                     "identical_to_first": agree[name]})
    by = {r["variant"]: r for r in rows}
    print()
    print(f"| variant | TPS | TPF | forwards | network calls | wall s (median of {args.repeats}) | "
          f"x (a) | x (b) | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    b_name = "(b) cache, batch 1"
    for r in rows:
        xa = r["tps"] / by["(a) reference loop"]["tps"] if "(a) reference loop" in by else float("nan")
        xb = r["tps"] / by[b_name]["tps"]
        print(f"| {r['variant']} | {r['tps']:.1f} | {r['tpf']:.2f} | {r['forwards']} | {r['network_calls']} | "
              f"{r['wall_s_median']:.2f} | {xa:.2f} | {xb:.2f} | {r['identical_to_first']} |")
    if "(a) reference loop" in by:
        same_forwards = by["(a) reference loop"]["forwards"] == by["(b0) cache, batch 1, no spec"]["forwards"]
        print(f"\n(a) and (b0) forwards equal: {same_forwards}")
    print(f"all outputs token-identical: {all(agree.values())}")
    roofline = print_roofline(lm, args, by, b_name, f"(c) cache, batch {args.batch}")
    if args.json:
        out = {"args": vars(args), "machine": machine, "rows": rows, "all_identical": all(agree.values()),
               "roofline": roofline}
        atomic_write(args.json, json.dumps(out, indent=2))
    return 0 if all(agree.values()) else 1


def _with(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


if __name__ == "__main__":
    sys.exit(main())
