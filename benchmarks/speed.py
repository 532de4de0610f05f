"""How fast is each part, on this machine? One subcommand per question, each on the same random model.

  decode     our decoder vs the reference-style loop (components.bench.baselines.reference_generate: batch
             of one, no cache, the whole prefix re-encoded every step), at batch 1 and `--batch`, with and
             without speculative verification: TPS, TPF, forwards, token identity; then the matmul floor
             (every linear layer timed alone at one row's block and at `--batch` rows' worth), which bounds
             what batching can gain on this machine.
  profile    where decoding time goes: time inside the network vs the decoder's own Python work, rows x
             query length per call, and tokens computed per generated token.
  forward    one network forward per precision (fp32, bf16, fp8 rounded, each int8 scheme of
             components.quantize) at the shapes decoding uses, and the largest logit difference from fp32.
  train      training tokens/s per objective variant (corruption + forward + backward + AdamW, exactly
             what the LightningModule runs, Lightning's overhead excluded).
  estimator  EBPO's vectorised block likelihood (one forward under the block-causal mask) vs one forward
             per block and per (sequence, block), forward only and forward+backward, with the edit terms.

    python -m benchmarks.speed decode --threads 1 --repeats 3 [--device cuda --dtype bfloat16]
    taskset -c 0 python -m benchmarks.speed profile --threads 1     # pinned to one core
    python -m benchmarks.speed forward --threads 1
    python -m benchmarks.speed train --stage sft --steps 20 --threads 2
    python -m benchmarks.speed estimator --threads 1 --blocks 8 16 32

Timings are medians over repeats after warm-up; repeats are interleaved so that load from other
processes hits every variant alike. `--json FILE` also writes the rows.
The model of decode, profile and forward is components.bench.random_model (default ~29M parameters:
hidden 512, 8 layers, vocab 4096; `--init peaked` commits several tokens per forward as a trained
model does, `--init default` one).
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from components.bench.machine import describe_machine
from components.bench.measure import sync_device as sync
from benchmarks.common import add_override_arguments
from components.bench.random_model import INITS, build_random_model, random_prompts


# ---------------------------------------------------------------------------------------- shared
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--init", choices=INITS, default="peaked")
    p.add_argument("--head-scale", type=float, default=3.0, help="--init peaked: output head scale")
    p.add_argument("--seed", type=int, default=0)


def model_from(args):
    return build_random_model(vocab=args.vocab, hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                              heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim, init=args.init,
                              head_scale=args.head_scale, seed=args.seed)


def add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="speedy", help="decoding preset in conf/decode/")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--min-prompt", type=int, default=8)
    p.add_argument("--max-prompt", type=int, default=40)


def machine_line() -> str:
    m = describe_machine()
    return (f"# {m['cpu']} | torch {m['torch']} | threads {torch.get_num_threads()} | affinity {m['cpu_affinity']} "
            f"| load avg {m['load_average']}")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------- decode
def gemm_floor_ms(lm, tokens: int, repeats: int) -> float:
    """Median time of one pass of every linear layer of the network at `tokens` input rows: the
    matmul work a decoding forward of a block cannot avoid, at this machine's GEMM rate."""
    linears = [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(tokens, m.in_features, dtype=lm.dtype, device=lm.device) for m in linears]
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            sync(lm.device)
            t = time.perf_counter()
            for m, x in zip(linears, inputs):
                m(x)
            sync(lm.device)
            if i >= 3:  # warm-up passes excluded
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def run_reference(lm, prompts, cfg):
    from components.bench.baselines import reference_generate
    from model import GenerationResult

    results = [reference_generate(lm, p, cfg) for p in prompts]
    return GenerationResult(sequences=[r.sequences[0] for r in results], forwards=[r.forwards[0] for r in results],
                            edits=[r.edits[0] for r in results], commits=[r.commits[0] for r in results],
                            canvases=[r.canvases[0] for r in results],
                            forward_calls=sum(r.forward_calls for r in results),
                            wall_seconds=sum(r.wall_seconds for r in results))


def cmd_decode(args) -> dict:
    from components.bench.baselines import reference_generate
    from components.presets import load_decode_config
    from model import generate

    lm = model_from(args).to(device=args.device, dtype=getattr(torch, args.dtype))
    prompts = random_prompts(args.prompts, args.min_prompt, args.max_prompt, args.vocab, args.seed)
    base = load_decode_config(args.preset, gen_length=args.gen_length, block_length=args.block_length)
    with_ = dataclasses.replace
    b_name, c_name = "(b) cache, batch 1", f"(c) cache, batch {args.batch}"
    variants = {
        "(b0) cache, batch 1, no spec": lambda: generate(lm, prompts, with_(base, max_batch_size=1,
                                                                            speculative_verify=False)),
        b_name: lambda: generate(lm, prompts, with_(base, max_batch_size=1)),
        f"(c0) cache, batch {args.batch}, no spec": lambda: generate(lm, prompts, with_(
            base, max_batch_size=args.batch, speculative_verify=False)),
        c_name: lambda: generate(lm, prompts, with_(base, max_batch_size=args.batch)),
    }
    ref_cfg = with_(base, use_cache=False, max_batch_size=1, speculative_verify=False)
    if not args.skip_reference:
        variants = {"(a) reference loop": lambda: run_reference(lm, prompts, ref_cfg), **variants}
    print(machine_line())
    print(f"# model: {lm.num_parameters() / 1e6:.1f}M params ({args.init} init, {args.dtype}); {len(prompts)} prompts "
          f"of {min(map(len, prompts))}-{max(map(len, prompts))} tokens; preset {args.preset} (threshold "
          f"{base.threshold}, editing {base.editing_threshold}); gen {args.gen_length}, block {args.block_length}")
    warm = with_(base, gen_length=args.block_length)  # one short decode through each code path, excluded
    generate(lm, prompts[:2], warm)
    reference_generate(lm, prompts[0], with_(warm, use_cache=False))

    walls: dict[str, list[float]] = {k: [] for k in variants}
    last, stable = {}, {}
    for rep in range(max(args.repeats, args.ref_repeats)):
        for name, fn in variants.items():
            if rep >= (args.ref_repeats if name.startswith("(a)") else args.repeats):
                continue
            start = time.perf_counter()
            res = fn()
            walls[name].append(time.perf_counter() - start)
            stable[name] = stable.get(name, True) and (name not in last or last[name].sequences == res.sequences)
            last[name] = res
    reference = next(iter(last.values()))
    rows = []
    for name, res in last.items():
        wall = statistics.median(walls[name])
        rows.append({"variant": name, "tokens": res.num_tokens, "forwards": sum(res.forwards),
                     "network_calls": res.forward_calls, "tpf": res.tokens_per_forward, "wall_s_median": wall,
                     "wall_s_all": walls[name], "tps": res.num_tokens / wall,
                     "identical_to_first": res.sequences == reference.sequences, "repeats_identical": stable[name]})
    by = {r["variant"]: r for r in rows}
    print(f"\n| variant | TPS | TPF | forwards | network calls | wall s (median of {args.repeats}) | x (a) | x (b) | "
          "same tokens |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        xa = r["tps"] / by["(a) reference loop"]["tps"] if "(a) reference loop" in by else float("nan")
        print(f"| {r['variant']} | {r['tps']:.1f} | {r['tpf']:.2f} | {r['forwards']} | {r['network_calls']} | "
              f"{r['wall_s_median']:.2f} | {xa:.2f} | {r['tps'] / by[b_name]['tps']:.2f} | {r['identical_to_first']} |")
    out = {"rows": rows, "all_identical": all(r["identical_to_first"] for r in rows)}
    if "(a) reference loop" in by:
        out["reference_forwards_equal"] = by["(a) reference loop"]["forwards"] == by["(b0) cache, batch 1, no spec"][
            "forwards"]
        print(f"\n(a) and (b0) forwards equal: {out['reference_forwards_equal']}")
    print(f"all outputs token-identical: {out['all_identical']}")
    out["roofline"] = roofline(lm, args, by[b_name], by[c_name], c_name)
    return out


def roofline(lm, args, b: dict, c: dict, c_name: str) -> dict:
    """How far batching can go here: each variant's time per forward against its matmuls' alone."""
    block = args.block_length
    floor_1 = gemm_floor_ms(lm, block, args.floor_repeats)
    floor_b = gemm_floor_ms(lm, block * args.batch, args.floor_repeats)
    ms_b = 1000 * b["wall_s_median"] / b["network_calls"]  # one row per call
    ms_c_row = 1000 * c["wall_s_median"] / c["forwards"]  # per row-forward
    bound = ms_b / (floor_b / args.batch)
    print(f"\nmatmul floor (every linear layer once, same weights and dtype, median of {args.floor_repeats}):")
    print(f"  {block} tokens (one row's block): {floor_1:.2f} ms | (b) spends {ms_b:.2f} ms per forward "
          f"({100 * floor_1 / ms_b:.0f}% in matmuls at best)")
    print(f"  {block * args.batch} tokens ({args.batch} rows): {floor_b:.2f} ms = {floor_b / args.batch:.2f} ms per row "
          f"| {c_name} spends {ms_c_row:.2f} ms per row-forward")
    print(f"  GEMM rate gain from batching alone: {args.batch * floor_1 / floor_b:.2f}x; best possible batch-"
          f"{args.batch} / batch-1 TPS ratio with zero non-matmul cost: {bound:.2f}x (measured: "
          f"{c['tps'] / b['tps']:.2f}x)")
    return {"floor_ms_batch1": floor_1, "floor_ms_batched": floor_b, "ms_per_forward_b": ms_b,
            "ms_per_row_forward_c": ms_c_row, "best_possible_ratio": bound, "measured_ratio": c["tps"] / b["tps"]}


# ---------------------------------------------------------------------------------------- profile
def cmd_profile(args) -> dict:
    from components.presets import load_decode_config
    from model import generate

    lm = model_from(args)
    prompts = random_prompts(args.prompts, args.min_prompt, args.max_prompt, args.vocab, args.seed)
    base = load_decode_config(args.preset, gen_length=args.gen_length, block_length=args.block_length)
    calls: list[tuple[int, int, float]] = []
    forward = lm.forward

    def timed_forward(input_ids, *a, **k):
        start = time.perf_counter()
        out = forward(input_ids, *a, **k)
        calls.append((input_ids.shape[0], input_ids.shape[1], time.perf_counter() - start))
        return out

    lm.forward = timed_forward
    print(machine_line())
    generate(lm, prompts[:2], dataclasses.replace(base, gen_length=args.block_length))  # warm-up
    print("| variant | wall s | in network s | outside s | network calls | mean rows x q_len | "
          "computed tokens / generated token | q_len histogram |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for batch in (1, args.batch):
        for spec in (False, True):
            calls.clear()
            start = time.perf_counter()
            res = generate(lm, prompts, dataclasses.replace(base, max_batch_size=batch, speculative_verify=spec))
            wall = time.perf_counter() - start
            inside = sum(c[2] for c in calls)
            row = {"variant": f"batch {batch}, speculative {'on' if spec else 'off'}", "wall_s": wall,
                   "network_s": inside, "outside_s": wall - inside, "network_calls": len(calls),
                   "mean_rows": sum(r for r, _, _ in calls) / len(calls),
                   "mean_query_length": sum(q for _, q, _ in calls) / len(calls),
                   "computed_per_generated": sum(r * q for r, q, _ in calls) / res.num_tokens,
                   "query_lengths": dict(sorted(collections.Counter(q for _, q, _ in calls).items()))}
            rows.append(row)
            print(f"| {row['variant']} | {wall:.2f} | {inside:.2f} | {wall - inside:.2f} | {len(calls)} | "
                  f"{row['mean_rows']:.1f} x {row['mean_query_length']:.1f} | {row['computed_per_generated']:.2f} | "
                  f"{row['query_lengths']} |", flush=True)
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- forward
def cmd_forward(args) -> dict:
    from components.quantize import apply_int8, round_to_fp8

    base = model_from(args)
    variants = {"fp32": base, "bf16": copy.deepcopy(base).to(torch.bfloat16)}
    fp8 = copy.deepcopy(base)
    round_to_fp8(fp8)
    variants["fp8 (dequantized, fp32 kernels)"] = fp8
    for scheme in args.int8:
        variants[scheme] = copy.deepcopy(base)
        apply_int8(variants[scheme], scheme)
    # one block with a KV cache at batch 1 and `--batch`, and the window the reference loop re-encodes
    shapes = [(1, args.block_length), (args.batch, args.block_length), (1, args.window)]
    g = torch.Generator().manual_seed(args.seed)
    inputs = {s: torch.randint(0, args.vocab - 2, s, generator=g) for s in shapes}
    times = {(v, s): [] for v in variants for s in shapes}
    print(machine_line() + f" | {base.num_parameters() / 1e6:.1f}M params")
    with torch.no_grad():
        ref = {s: base(inputs[s]).logits for s in shapes}
        diffs = {v: max((lm(inputs[s]).logits.float() - ref[s]).abs().max().item() for s in shapes)
                 for v, lm in variants.items()}
        for _ in range(args.repeats + 1):  # the first repeat is a warm-up
            for v, lm in variants.items():
                for s in shapes:
                    times[(v, s)].append(timed(lambda: lm(inputs[s])))
    med = {k: statistics.median(t[1:]) * 1000 for k, t in times.items()}
    print("| precision | " + " | ".join(f"B={b}, T={t} ms" for b, t in shapes) + " | "
          + " | ".join(f"x fp32 (B={b},T={t})" for b, t in shapes[:2]) + " | max |logit diff| |")
    print("|---" * (len(shapes) + 4) + "|")
    rows = []
    for v in variants:
        speedup = [med[("fp32", s)] / med[(v, s)] for s in shapes[:2]]
        rows.append({"precision": v, "ms": {f"{b}x{t}": med[(v, (b, t))] for b, t in shapes},
                     "x_fp32": speedup, "max_logit_diff": diffs[v]})
        print(f"| {v} | " + " | ".join(f"{med[(v, s)]:.1f}" for s in shapes) + " | "
              + " | ".join(f"{x:.2f}" for x in speedup) + f" | {diffs[v]:.3g} |")
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- train
TRAIN_VARIANTS = {
    "m2t": {"t2t_rate_max": 0.0, "mtf_prob": 0.0},
    "m2t+t2t": {"t2t_rate_max": 0.2, "mtf_prob": 0.0},
    "m2t+t2t+mtf(every step)": {"t2t_rate_max": 0.2, "mtf_prob": 1.0},
}


def cmd_train(args) -> dict:
    from components.data import load_data_config, prepare_data
    from components.training.data import StepBatchSampler
    from components.training.objective import DraftEditObjective
    from components.training.run import build_model, load_train_config, make_collate
    from components.training.schedule import effective_block_length

    from components.config import CONF_DIR

    cfg = load_train_config(CONF_DIR / "train" / f"{args.stage}.yaml", args.train_overrides)
    prepared = prepare_data(load_data_config(overrides=[f"cache_dir={args.data_cache}", *args.data_overrides]))
    dataset = prepared.cpt if args.stage == "cpt" else prepared.sft
    collate = make_collate(cfg, prepared)
    sampler = StepBatchSampler(len(dataset), cfg.trainer.batch_size, seed=0)
    batches = [collate([dataset[i] for i in sampler.batch(k)]) for k in range(args.steps + 2)]
    tok = prepared.tokenizer
    print(f"stage {args.stage}, batch {cfg.trainer.batch_size} x ~{batches[0]['input_ids'].shape[1]} tokens, "
          f"{torch.get_num_threads()} thread(s), {args.steps} timed steps")
    rows, base = [], None
    for name, fields in TRAIN_VARIANTS.items():
        lm = build_model(cfg, tok).train()
        obj = DraftEditObjective(dataclasses.replace(cfg.objective, **fields), mask_id=tok.mask_id,
                                 vocab_size=lm.config.vocab_size, special_ids=set(tok.special_ids))
        opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
        rates = []
        for k, batch in enumerate(batches):
            g = torch.Generator().manual_seed(k)
            start = time.perf_counter()
            block = effective_block_length(cfg.trainer.block_length, batch["input_ids"].shape[1])
            obj(lm, batch, block, g, step=10**6).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k >= 2:  # two warm-up steps
                rates.append(batch["input_ids"].numel() / (time.perf_counter() - start))
        med = statistics.median(rates)
        base = base or med
        rows.append({"variant": name, "tokens_per_s": med, "p10": sorted(rates)[len(rates) // 10],
                     "cost_vs_m2t": base / med})
        print(f"  {name:26s} {med:8.0f} tokens/s (median; p10 {rows[-1]['p10']:.0f})  cost x{base / med:.2f} vs m2t")
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- estimator
def per_block_batched(lm, layout, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """One forward per block, all sequences at once (equal prompt and response lengths)."""
    import torch.nn.functional as F

    from model.masks import block_causal_mask

    B = layout.block_length
    P, L = int(layout.prompt_lengths[0]), int(layout.lengths[0])
    first, nb = P // B, int(layout.num_blocks()[0])
    out = []
    for rb in range(nb):
        start, end = (first + rb) * B, min((first + rb + 1) * B, L)
        ids = layout.tokens[:, :end].clone()
        hide = masked[:, start:end] & layout.response_positions()[:, start:end]
        ids[:, start:end] = torch.where(hide, torch.full_like(ids[:, start:end], mask_id), ids[:, start:end])
        logits = lm(ids, attention_mask=block_causal_mask(end, B)).logits[:, start:end]
        lp = F.log_softmax(logits.float(), -1).gather(-1, layout.tokens[:, start:end, None])[..., 0]
        out.append(torch.where(hide, lp, torch.zeros_like(lp)).sum(-1))
    return torch.stack(out, 1)  # (S, NB)


def cmd_estimator(args) -> dict:
    from components.rl.estimator import (SequenceLayout, block_log_likelihoods, block_log_likelihoods_reference,
                                         draw_masks, draw_substitutes)

    lm = build_random_model(vocab=args.vocab, hidden=args.hidden, intermediate=3 * args.hidden, layers=args.layers,
                            heads=4, kv_heads=2, head_dim=args.hidden // 4, init="default", seed=0)
    mask_id = lm.config.mask_token_id
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, {lm.num_parameters() / 1e6:.2f}M "
          f"params; S={args.batch}, block_length={args.block_length}, prompt={args.prompt_length}, "
          f"threads={torch.get_num_threads()}")
    print("| blocks | tokens | loop ms | blocks ms | vector ms | loop/vec | blk/vec | fwd+bwd blk ms | vec ms | "
          "blk/vec | vec+edit ms | edit/vec | max abs diff |\n" + "|---" * 13 + "|")
    rows = []
    for nb in args.blocks:
        g = torch.Generator().manual_seed(nb)
        R = nb * args.block_length - args.prompt_length % args.block_length  # responses end on a block boundary
        prompts = torch.randint(3, mask_id, (args.batch, args.prompt_length), generator=g).tolist()
        responses = torch.randint(3, mask_id, (args.batch, R), generator=g).tolist()
        layout = SequenceLayout.from_lists(prompts, responses, args.block_length)
        if int(layout.num_blocks()[0]) != nb:
            raise SystemExit(f"--prompt-length {args.prompt_length} with --block-length {args.block_length}: the "
                             f"responses do not span {nb} blocks")
        masks = draw_masks(layout, torch.tensor([0.5], dtype=torch.float64), mask_id, g)
        masked = masks[0]
        subs = draw_substitutes(layout, masks, 0.1, args.vocab, {mask_id}, g)[0]
        lm.eval()
        with torch.no_grad():
            vec = block_log_likelihoods(lm, layout, masked, mask_id).per_block
            blk = per_block_batched(lm, layout, masked, mask_id)
            ref = block_log_likelihoods_reference(lm, layout, masked, mask_id)[0]
        diff = max(float((vec - blk).abs().max()), float((vec - ref).abs().max()))

        def no_grad(fn):
            def run():
                with torch.no_grad():
                    fn(lm, layout, masked, mask_id)
            return run

        def backward(loss_of):
            def run():
                loss_of().backward()
                lm.zero_grad(set_to_none=True)
            return run

        def vec_edit_loss():
            out = block_log_likelihoods(lm, layout, masked, mask_id, subs)
            return out.per_block.sum() + out.edit_logp.sum()

        fns = {"vector": no_grad(block_log_likelihoods), "blocks": no_grad(per_block_batched),
               "train_vector": backward(lambda: block_log_likelihoods(lm, layout, masked, mask_id).per_block.sum()),
               "train_blocks": backward(lambda: per_block_batched(lm, layout, masked, mask_id).sum()),
               "train_vector_edit": backward(vec_edit_loss)}
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in ("loop", *fns)}
        for r in range(args.repeats):
            for k, fn in fns.items():
                times[k].append(timed(fn))
            if r < args.loop_repeats:
                times["loop"].append(timed(no_grad(block_log_likelihoods_reference)))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items() if v}
        row = {"blocks": nb, "response_tokens": R, "median_ms": med, "max_abs_diff": diff,
               "loop_over_vector": med["loop"] / med["vector"] if "loop" in med else float("nan"),
               "blocks_over_vector": med["blocks"] / med["vector"],
               "train_blocks_over_vector": med["train_blocks"] / med["train_vector"],
               "train_edit_over_vector": med["train_vector_edit"] / med["train_vector"]}
        rows.append(row)
        print(f"| {nb} | {R} | {med.get('loop', float('nan')):.1f} | {med['blocks']:.1f} | {med['vector']:.1f} | "
              f"{row['loop_over_vector']:.1f}x | {row['blocks_over_vector']:.1f}x | {med['train_blocks']:.1f} | "
              f"{med['train_vector']:.1f} | {row['train_blocks_over_vector']:.1f}x | {med['train_vector_edit']:.1f} | "
              f"{row['train_edit_over_vector']:.2f}x | {diff:.2e} |", flush=True)
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decode", help="our decoder vs the reference loop, batch 1 and N, and the matmul floor")
    add_model_arguments(d)
    add_prompt_arguments(d)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--repeats", type=int, default=3, help="timed repeats of (b0), (b), (c0), (c)")
    d.add_argument("--ref-repeats", type=int, default=1, help="timed repeats of (a) (the slow loop)")
    d.add_argument("--floor-repeats", type=int, default=30, help="timed passes of the matmul floor")
    d.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    d.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    d.add_argument("--skip-reference", action="store_true", help="only (b0), (b), (c0), (c)")
    pr = sub.add_parser("profile", help="time inside the network vs the decoder's own work")
    add_model_arguments(pr)
    add_prompt_arguments(pr)
    pr.add_argument("--batch", type=int, default=8)
    f = sub.add_parser("forward", help="one forward per precision")
    add_model_arguments(f)
    f.add_argument("--block-length", type=int, default=32)
    f.add_argument("--batch", type=int, default=8)
    f.add_argument("--window", type=int, default=256, help="tokens of the reference loop's re-encoded window")
    f.add_argument("--repeats", type=int, default=6)
    f.add_argument("--int8", nargs="*", default=["int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm"],
                   help="int8 schemes of components.quantize to time")
    t = sub.add_parser("train", help="training tokens/s per objective variant")
    t.add_argument("--stage", choices=["cpt", "sft"], default="sft")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--data-cache", default="outputs/data")
    add_override_arguments(t, "training config override (conf/train/<stage>.yaml), repeatable")
    e = sub.add_parser("estimator", help="EBPO's vectorised block likelihood vs per-block loops")
    e.add_argument("--blocks", type=int, nargs="+", default=[8, 16, 32])
    e.add_argument("--block-length", type=int, default=8)
    e.add_argument("--batch", type=int, default=8, help="sequences (S)")
    e.add_argument("--prompt-length", type=int, default=20)
    e.add_argument("--repeats", type=int, default=5)
    e.add_argument("--loop-repeats", type=int, default=2, help="repeats of the slow per-(sequence, block) loop")
    e.add_argument("--hidden", type=int, default=128)
    e.add_argument("--layers", type=int, default=4)
    e.add_argument("--vocab", type=int, default=512)
    for s in (d, pr, f, t, e):
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


COMMANDS = {"decode": cmd_decode, "profile": cmd_profile, "forward": cmd_forward, "train": cmd_train,
            "estimator": cmd_estimator}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = COMMANDS[args.cmd](args)
    finally:
        torch.set_num_threads(previous)
    if args.json:
        from model.files import atomic_write

        record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "machine": describe_machine(), **result}
        atomic_write(args.json, json.dumps(record, indent=2) + "\n")
    return 0 if result.get("all_identical", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
