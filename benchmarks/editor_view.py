"""What does the editor see at the tokens a decode got wrong? (issue 22: why edits do not repair)

Decodes the held-out split of a synthetic family with a preset, then runs ONE forward over each wrong
answer's final canvas under the decoding (block-causal) mask -- exactly the view a post step judges
the block from -- and reports, at every token that differs from the reference answer: the rank of the
right token in the model's prediction there, and the mean probability of the token it drafted vs the
right one. An editor that could repair has the right token as its arg-max (rank 0); one that copies
its draft has the drafted token at p ~ 1. No threshold can make a rank-1 token an edit. Families with
one valid answer only (the reference must be the answer).

    .venv/bin/python benchmarks/editor_view.py outputs/sort32/s0/t2t_stream/sft/model --family sort \
        --params '{"min_len": 32, "max_len": 36, "max_value": 9}' --gen-length 96 --n 100 --mode speedy
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from components.presets import load_decode_config  # noqa: E402
from components.rl.rollouts import encode_prompt  # noqa: E402
from components.families import get_family  # noqa: E402
from components.families.synthetic import MULTI_ANSWER_FAMILIES  # noqa: E402
from model import DiffusionLM, generate  # noqa: E402
from model.masks import block_causal_mask  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint folder")
    p.add_argument("--family", default="sort")
    p.add_argument("--params", default="{}", help="family difficulty as JSON")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--gen-length", type=int, default=96)
    p.add_argument("--mode", default="speedy", help="decoding preset in conf/decode/")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.family in MULTI_ANSWER_FAMILIES:
        p.error(f"--family {args.family}: has many valid answers; the reference would not be 'the right token'")
    if not (Path(args.model) / "config.json").is_file():
        p.error(f"{args.model}: not a checkpoint folder (no config.json)")
    torch.set_num_threads(args.threads)
    lm = DiffusionLM.from_pretrained(args.model).eval()
    tok = load_tokenizer(args.model)
    family = get_family(args.family, **json.loads(args.params))
    examples = family.make("heldout", args.n, seed=123)
    prompts = [encode_prompt(tok, e.prompt, "chat") for e in examples]
    cfg = load_decode_config(args.mode, gen_length=args.gen_length, eos_id=tok.eos_id, mask_id=tok.mask_id,
                             max_batch_size=64)
    with torch.no_grad():
        res = generate(lm, prompts, cfg)
    ranks: collections.Counter = collections.Counter()
    p_drafted, p_right, failed = [], [], 0
    for e, prompt, canvas, seq in zip(examples, prompts, res.canvases, res.sequences):
        if family.score(tok.decode(seq, skip_special_tokens=True).strip(), e):
            continue
        failed += 1
        reference = tok.encode(e.answer) + [tok.eos_id]
        ids = torch.tensor(canvas)
        with torch.no_grad():
            logits = lm(ids[None], attention_mask=block_causal_mask(len(canvas), cfg.block_length)).logits[0]
        logp = F.log_softmax(logits.float(), -1)
        for i, want in enumerate(reference):
            pos = len(prompt) + i
            if pos >= len(canvas) or canvas[pos] == want:
                continue
            ranks[min(int((logp[pos] > logp[pos, want]).sum()), 3)] += 1
            p_drafted.append(float(logp[pos, canvas[pos]].exp()))
            p_right.append(float(logp[pos, want].exp()))
    wrong = sum(ranks.values())
    print(f"{args.model}: {args.mode} mode, {len(examples) - failed}/{len(examples)} right, "
          f"{wrong} wrong tokens in {failed} wrong answers")
    if wrong:
        print("rank of the right token in the editor's view: "
              + ", ".join(f"{'>=3' if r == 3 else r}: {ranks[r]}" for r in sorted(ranks)))
        print(f"mean p(drafted wrong token) {sum(p_drafted) / wrong:.3f}   mean p(right token) {sum(p_right) / wrong:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
