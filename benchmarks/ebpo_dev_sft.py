"""A quick SFT checkpoint to run EBPO from (issue 5, item 5), and the verifiable task it is run on.

Why: item 5 needs a checkpoint that is *imperfect* on a held-out verifiable task. Within minutes on two
shared cores the tiny models of the pipeline stay at 0% on the synthetic families (they predict the
per-position marginals and ignore the prompt), so RL has no signal there. A copy task
("copy: 3 8 1" -> "3 8 1", 3-8 digits, split disjoint by a hash of the prompt) is learned gradually
from the SFT objective: after a few hundred steps the model copies most digits but few answers are
exact — the regime in which RL should help.

    # 1. write the task (JSONL records {id, family, prompt, answer} for prompts.source=jsonl)
    .venv/bin/python benchmarks/ebpo_dev_sft.py task --out /tmp/ebpo/copy
    # 2. SFT (the training stage's DraftEditObjective on the chat format, block 8); resumable with --init
    .venv/bin/python benchmarks/ebpo_dev_sft.py sft --data /tmp/ebpo/copy/train.jsonl --out /tmp/ebpo/sft_a \
        --minutes 5 --t2t 0.05
    .venv/bin/python benchmarks/ebpo_dev_sft.py sft --data /tmp/ebpo/copy/train.jsonl --out /tmp/ebpo/sft \
        --minutes 7 --t2t 0.0 --init /tmp/ebpo/sft_a

Training stops on wall-clock time, so the result depends on the machine's load (note it with results).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def write_task(out: Path, n_train: int = 4000, n_heldout: int = 300, seed: int = 0) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: dict[str, list[dict]] = {"train": [], "heldout": []}
    want = {"train": n_train, "heldout": n_heldout}
    while any(len(rows[s]) < want[s] for s in rows):
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 8)))
        prompt = f"copy: {digits}"
        if prompt in seen:
            continue
        seen.add(prompt)
        split = "heldout" if int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 5 == 0 else "train"
        if len(rows[split]) < want[split]:
            rows[split].append({"id": f"copy-{split}-{len(rows[split])}", "family": "copy", "prompt": prompt,
                                "answer": digits})
    out.mkdir(parents=True, exist_ok=True)
    for split, records in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print({s: len(r) for s, r in rows.items()}, "->", out)


def sft(data: Path, out: Path, minutes: float, t2t: float, lr: float, init: Path | None, block: int,
        batch_size: int, seed: int) -> None:
    from components.data.bpe import train_bpe_tokenizer
    from components.training.config import ObjectiveConfig
    from components.training.objective import DraftEditObjective
    from model import DiffusionLM, ModelConfig
    from model.tokenizer import load_tokenizer

    records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    convs = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}] for r in records]
    if init is not None:
        tok, lm = load_tokenizer(init), DiffusionLM.from_pretrained(init)
    else:
        tok = train_bpe_tokenizer([m["content"] for c in convs[:2000] for m in c], vocab_size=512, min_frequency=2)
        cfg = ModelConfig.tiny(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id, eos_token_id=tok.eos_id,
                               pad_token_id=tok.pad_id, max_position_embeddings=256)
        torch.manual_seed(seed)
        lm = DiffusionLM(cfg)
    lm.train()
    rows = []
    for c in convs:  # chat rows padded with EOS to a block multiple, loss on the reply (as format_sft does)
        ids, reply = tok.encode_chat(c)
        gap = -len(ids) % block
        rows.append((ids + [tok.eos_id] * gap, [not r for r in reply] + [False] * gap))
    objective = DraftEditObjective(ObjectiveConfig(t_min=0.05, t_max=1.0, t2t_rate_max=t2t), mask_id=tok.mask_id,
                                   vocab_size=tok.vocab_size, special_ids=tok.special_ids)
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    warmup = 5 if init is not None else 50
    start, step = time.time(), 0
    while time.time() - start < minutes * 60:
        batch = rng.sample(rows, batch_size)
        width = max(len(r[0]) for r in batch)
        ids = torch.full((batch_size, width), tok.pad_id)
        prompt = torch.ones(batch_size, width, dtype=torch.bool)
        doc = torch.full((batch_size, width), -1)
        for i, (a, p) in enumerate(batch):
            ids[i, :len(a)] = torch.tensor(a)
            prompt[i, :len(a)] = torch.tensor(p)
            doc[i, :len(a)] = 0
        loss_mask = ~prompt
        frac = (time.time() - start) / (minutes * 60)
        for group in opt.param_groups:  # warm-up, then linear decay to 10% over the time budget
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * (1 - frac))
        o = objective(lm, {"input_ids": ids, "prompt_mask": prompt, "loss_mask": loss_mask, "doc_ids": doc}, block,
                      g, step)
        opt.zero_grad()
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step:5d}  {time.time() - start:6.0f}s  loss {o.metrics['loss']:.3f}", flush=True)
        step += 1
    lm.save_pretrained(out)
    tok.save(out)
    print(f"saved {out} after {step} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("task", help="write train.jsonl / heldout.jsonl of the copy task")
    t.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("sft", help="train (or continue) the tiny SFT model on a JSONL task")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--minutes", type=float, default=5.0)
    s.add_argument("--t2t", type=float, default=0.05, help="T2T corruption rate (upper end of the band)")
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--init", type=Path, help="continue from this checkpoint (its tokenizer too)")
    s.add_argument("--block", type=int, default=8)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "task":
        write_task(args.out)
    else:
        torch.set_num_threads(args.threads)
        sft(args.data, args.out, args.minutes, args.t2t, args.lr, args.init, args.block, args.batch_size, args.seed)


if __name__ == "__main__":
    main()
