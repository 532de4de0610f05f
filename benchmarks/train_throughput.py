"""Training throughput of the tiny default model on this machine: tokens/s per objective variant.

One optimizer step = corruption + forward on x_t ⊕ x_0 + backward + AdamW, exactly what the
LightningModule runs (Lightning's own overhead excluded). Prints the median over steps and the
cost ratio of each variant against M2T only (MTF's second turn is the expensive part).

  python benchmarks/train_throughput.py --stage sft --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

VARIANTS = {
    "m2t": {"t2t_rate_max": 0.0, "mtf_prob": 0.0},
    "m2t+t2t": {"t2t_rate_max": 0.2, "mtf_prob": 0.0},
    "m2t+t2t+mtf(every step)": {"t2t_rate_max": 0.2, "mtf_prob": 1.0},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["cpt", "sft"], default="sft")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-cache", default="outputs/data")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dataclasses import replace

    from components.data import load_data_config, prepare_data
    from components.training.data import StepBatchSampler
    from components.training.objective import DraftEditObjective
    from components.training.run import _collate, build_model, load_train_config
    from components.training.schedule import effective_block_length

    cfg = load_train_config(f"conf/train/{args.stage}.yaml")
    prepared = prepare_data(load_data_config(overrides=[f"cache_dir={args.data_cache}"]))
    dataset = prepared.cpt if args.stage == "cpt" else prepared.sft
    collate = _collate(cfg, prepared)
    sampler = StepBatchSampler(len(dataset), cfg.trainer.batch_size, seed=0)
    batches = [collate([dataset[i] for i in sampler.batch(k)]) for k in range(args.steps + 2)]
    tok = prepared.tokenizer
    print(f"stage {args.stage}, batch {cfg.trainer.batch_size} x ~{batches[0]['input_ids'].shape[1]} tokens, "
          f"{args.threads} thread(s), {args.steps} timed steps")
    base = None
    for name, fields in VARIANTS.items():
        lm = build_model(cfg, tok).train()
        obj = DraftEditObjective(replace(cfg.objective, **fields), mask_id=tok.mask_id, vocab_size=lm.config.vocab_size,
                                 special_ids=set(tok.special_ids))
        opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
        rates = []
        for k, batch in enumerate(batches):
            g = torch.Generator().manual_seed(k)
            t0 = time.perf_counter()
            block = effective_block_length(cfg.trainer.block_length, batch["input_ids"].shape[1])
            loss = obj(lm, batch, block, g, step=10**6).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k >= 2:  # two warm-up steps
                rates.append(batch["input_ids"].numel() / (time.perf_counter() - t0))
        med = statistics.median(rates)
        base = base or med
        print(f"  {name:26s} {med:8.0f} tokens/s (median; p10 {sorted(rates)[len(rates) // 10]:.0f})  "
              f"cost x{base / med:.2f} vs m2t")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
