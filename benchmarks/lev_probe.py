"""Could a Levenshtein edit fire on the model's own answers? The DELETE/INSERT probabilities there.

A DELETE or INSERT edit fires only where the full head's arg-max is that control and its probability
exceeds delete_threshold / insert_threshold (model.levenshtein.edit_decisions). When no edit ever
fires, a threshold sweep cannot tell "the thresholds are too high" from "the control is never the
arg-max"; this probe tells them apart before any sweep is run. It decodes the held-out split of a
family (greedy, a preset), then reads every answer position in the block-end view (one forward over
the final canvas under the decoding's block-causal mask, as components.edits.block_end_logits reads
it) and reports, per group of positions, how often each control is the arg-max and the max and 99th
percentile of its probability. Groups: the position's token is right or wrong against the reference
(aligned by LCS, model.levenshtein.lcs_anchors, so a token shifted by a length error still counts as
right), and the positions whose edit label against the reference (model.levenshtein.edit_labels) is
DELETE or INSERT: where the control should fire.

  python -m benchmarks.lev_probe --model outputs/lev/t2t_stream_lev_w5/sft/model --family sort \
      --family-params '{"sort": {"min_len": 8, "max_len": 16, "max_value": 9}}' --n 200 --gen-length 48 \
      [--preset quality] [--set delete_threshold=0.5] [--json probe.json]

Families with several valid answers are probed on their unique-answer examples only
(components.families.has_unique_answer): elsewhere there is no reference to align with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import HELDOUT_SEED, decode_overrides, encode_prompts, heldout_examples, load_checkpoint
from components.presets import DecodeChoice
from model.files import atomic_write
from model.levenshtein import DELETE, INSERT, edit_labels, lcs_anchors

GROUPS = ("right", "wrong", "label_delete", "label_insert")
CONTROLS = ("delete", "insert")


@torch.no_grad()
def control_probabilities(lm, canvas: list[int], start: int, length: int, block_length: int,
                          control_ids: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities [length, 2] of DELETE and INSERT, full-head arg-max [length]) at canvas positions
    start..start+length-1, in the block-end view (components.edits.block_end_logits)."""
    from components.edits import block_end_logits

    logits = block_end_logits(lm, canvas, block_length, list(range(start, start + length))).float()  # (K, V)
    probs = torch.softmax(logits, dim=-1)
    return probs[:, list(control_ids)], probs.argmax(-1)


def position_groups(sequence: list[int], reference: list[int], control_ids: tuple[int, int]) -> dict[str, list[bool]]:
    """Per generated position, its membership of each group of GROUPS (reference with its EOS)."""
    never = -1  # no generated token is a mask: the alignment matches tokens only
    anchored = {i for i, _ in lcs_anchors(sequence, reference, never)}
    labels = edit_labels(sequence, reference, mask_id=never, delete_id=control_ids[0], insert_id=control_ids[1])
    right = [i in anchored for i in range(len(sequence))]
    return {"right": right, "wrong": [not r for r in right],
            "label_delete": [op == DELETE for op in labels.ops], "label_insert": [op == INSERT for op in labels.ops]}


def summarize(probs: torch.Tensor, argmax: torch.Tensor, groups: dict[str, torch.Tensor],
              control_ids: tuple[int, int]) -> dict[str, dict]:
    """{group: {positions, <control>_argmax, <control>_max, <control>_p99}} over the probed positions."""
    out = {}
    for name in GROUPS:
        where = groups[name]
        cell: dict = {"positions": int(where.sum())}
        for k, control in enumerate(CONTROLS):
            p = probs[where, k]
            cell[f"{control}_argmax"] = int((argmax[where] == control_ids[k]).sum())
            cell[f"{control}_max"] = float(p.max()) if len(p) else None
            cell[f"{control}_p99"] = float(torch.quantile(p, 0.99)) if len(p) else None
        out[name] = cell
    return out


def probe(lm, tok, examples, cfg) -> dict:
    """Decode `examples` under `cfg` and summarize the control probabilities of their answer positions."""
    from components.edits import example_reference
    from model import generate

    control_ids = (lm.config.delete_token_id, lm.config.insert_token_id)
    if None in control_ids:
        raise SystemExit("lev_probe: the model has no DELETE/INSERT rows (delete_token_id/insert_token_id unset); "
                         "train it with train.objective.levenshtein_prob > 0")
    prompts = encode_prompts(tok, examples)
    with torch.no_grad():
        res = generate(lm, prompts, cfg)
    all_probs, all_argmax, all_groups = [], [], {g: [] for g in GROUPS}
    probed = 0
    for e, prompt, seq, canvas in zip(examples, prompts, res.sequences, res.canvases):
        reference = example_reference(tok, e)
        if reference is None or not seq:
            continue
        probed += 1
        probs, argmax = control_probabilities(lm, canvas, len(prompt), len(seq), cfg.block_length, control_ids)
        groups = position_groups(list(seq), reference + [tok.eos_id], control_ids)
        all_probs.append(probs)
        all_argmax.append(argmax)
        for g in GROUPS:
            all_groups[g].append(torch.tensor(groups[g], dtype=torch.bool))
    if not probed:
        raise SystemExit("lev_probe: no example with a unique reference answer to align with")
    probs, argmax = torch.cat(all_probs), torch.cat(all_argmax)
    groups = {g: torch.cat(v) for g, v in all_groups.items()}
    return {"examples": probed, "groups": summarize(probs, argmax, groups, control_ids)}


def table_lines(result: dict) -> list[str]:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{result['examples']} answers probed",
             "| positions | n | DELETE arg-max | DELETE max | DELETE p99 | INSERT arg-max | INSERT max | INSERT p99 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in result["groups"].items():
        lines.append(f"| {name} | {c['positions']} | {c['delete_argmax']} | {fmt(c['delete_max'])} | "
                     f"{fmt(c['delete_p99'])} | {c['insert_argmax']} | {fmt(c['insert_max'])} | {fmt(c['insert_p99'])} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (with the DELETE/INSERT rows)")
    p.add_argument("--family", required=True)
    p.add_argument("--family-params", default="{}", help='JSON difficulty per family, e.g. \'{"sort": {"max_value": 9}}\'')
    p.add_argument("--n", type=int, default=200, help="held-out examples")
    p.add_argument("--sample-seed", type=int, default=HELDOUT_SEED, help="which held-out sample to draw")
    p.add_argument("--preset", default="quality", help="decoding preset in conf/decode/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="DecodeConfig override, repeatable")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--block-length", type=int, default=None, help="default: the preset's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fields = decode_overrides(args.set, p)
    if args.block_length is not None:
        fields["block_length"] = args.block_length
    lm, tok = load_checkpoint(args.model)
    params = json.loads(args.family_params)
    examples = heldout_examples([args.family], args.n, params, seed=args.sample_seed)
    cfg = DecodeChoice(args.preset, fields).load(gen_length=args.gen_length, eos_id=tok.eos_id, mask_id=tok.mask_id,
                                                 max_batch_size=64)
    result = probe(lm, tok, examples, cfg)
    print("\n".join(table_lines(result)))
    if args.json:
        atomic_write(Path(args.json), json.dumps({"args": vars(args), **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
