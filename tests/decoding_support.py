"""Shared by the decoding tests: a trajectory replayed into the canvas it produced."""

import torch

from model.levenshtein import apply_block_edits


def moves(record, mask_id: int):
    """The BlockEdit a structural record describes (its block, its deletions and insertions)."""
    m = len(record.before)
    delete, insert = torch.zeros(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)
    delete[list(record.deleted)] = True
    insert[list(record.inserted)] = True
    return apply_block_edits(torch.tensor(record.before), delete, insert, mask_id=mask_id)


def replay(traj) -> list[int]:
    """The final canvas rebuilt from a trajectory: each step's fills and substitutions, then its
    structural edits on the block they name (checked against the block the record saw)."""
    canvas = list(traj.initial_canvas)
    for i, step in enumerate(traj.steps):
        for pos, tok in step.m2t:
            assert canvas[pos] == traj.mask_id
            canvas[pos] = tok
        for pos, old, new in step.t2t:
            assert canvas[pos] == old
            canvas[pos] = new
        record = traj.structural.get(i)
        if record is not None:
            lo, hi = record.start, record.start + len(record.before)
            assert tuple(canvas[lo:hi]) == record.before
            canvas[lo:hi] = moves(record, traj.mask_id).tokens.tolist()
    return canvas
