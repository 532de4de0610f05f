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
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.bench.baselines import reference_generate  # noqa: E402
from components.bench.machine import describe_machine  # noqa: E402
from components.decoding import load_decode_config  # noqa: E402
from model import DiffusionLM, GenerationResult, ModelConfig, generate  # noqa: E402


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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true", help="only (b0), (b), (c)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    lm = build_model(args).to(getattr(torch, args.dtype))
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
    if args.json:
        out = {"args": vars(args), "machine": machine, "rows": rows, "all_identical": all(agree.values())}
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, args.json)
    return 0 if all(agree.values()) else 1


def _with(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


if __name__ == "__main__":
    sys.exit(main())
