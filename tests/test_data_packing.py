"""CPT packing keeps documents apart; SFT rows put the loss on replies only; collators pad correctly."""

import random

import pytest
import torch

from components.data import PAD_DOC, CPTDataset, SFTCollator, SFTDataset, SequenceTooLongError, cpt_collate
from components.data.packing import format_sft, pack_cpt
from model.masks import block_diffusion_mask

EOS, PAD = 1, 0


def _docs(n=30, seed=0):
    rng = random.Random(seed)
    return [[rng.randint(10, 99) for _ in range(rng.randint(1, 90))] for _ in range(n)]


def _segments(row_ids, row_docs):
    """(doc_id, tokens) runs of a row, padding excluded."""
    out = []
    for tok, d in zip(row_ids.tolist(), row_docs.tolist()):
        if d == PAD_DOC:
            continue
        if out and out[-1][0] == d:
            out[-1][1].append(tok)
        else:
            out.append((d, [tok]))
    return out


@pytest.mark.parametrize("align", [False, True])
def test_pack_cpt_keeps_every_document_and_its_boundaries(align):
    docs = _docs()
    packed = pack_cpt(docs, 64, eos_id=EOS, pad_id=PAD, block_length=16, align_documents=align)
    assert packed.input_ids.shape[1] == 64 and packed.input_ids.shape == packed.doc_ids.shape
    # the loss covers exactly the non-padding positions, and padding holds the pad id
    assert torch.equal(packed.loss_mask, packed.doc_ids != PAD_DOC)
    assert bool((packed.input_ids[~packed.loss_mask] == PAD).all())
    # reading the rows back segment by segment gives each document followed by EOS, in order
    stream = []
    for r in range(len(packed)):
        segs = _segments(packed.input_ids[r], packed.doc_ids[r])
        assert [d for d, _ in segs] == list(range(len(segs)))  # row-local ids 0, 1, 2, ...
        stream.extend(segs)
    rebuilt, current = [], []
    for _, toks in stream:
        current.extend(toks)
        if current[-1] == EOS:
            rebuilt.append(current[:-1])
            current = []
    assert rebuilt == docs and current == []
    if align:  # every document (not continuation) starts at a block boundary
        for r in range(len(packed)):
            d = packed.doc_ids[r].tolist()
            starts = [i for i in range(64) if d[i] != PAD_DOC and (i == 0 or d[i - 1] != d[i])]
            assert all(i % 16 == 0 for i in starts[1:])
    else:  # without alignment only the last row has padding
        assert bool(packed.loss_mask[:-1].all())


def test_pack_cpt_rejects_bad_lengths_and_empty_input():
    with pytest.raises(ValueError, match="multiple of block_length"):
        pack_cpt(_docs(), 60, eos_id=EOS, pad_id=PAD, block_length=16)
    with pytest.raises(ValueError, match="no tokens"):
        pack_cpt([[], []], 64, eos_id=EOS, pad_id=PAD, block_length=16)


def test_packed_documents_never_attend_each_other():
    """Feeding the packed doc_ids to the training mask blocks every cross-document pair."""
    packed = pack_cpt(_docs(8), 32, eos_id=EOS, pad_id=PAD, block_length=8)
    batch = cpt_collate([CPTDataset(packed)[i] for i in range(min(3, len(packed)))])
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (batch["doc_ids"].shape[0], 32)
    mask = block_diffusion_mask(32, 8, doc_ids=batch["doc_ids"])  # (B, 1, 64, 64)
    docs2 = torch.cat([batch["doc_ids"], batch["doc_ids"]], dim=1)  # (B, 64)
    cross = docs2[:, :, None] != docs2[:, None, :]
    assert not bool((mask[:, 0] & cross).any())
    assert bool(mask[:, 0].any(dim=-1).all())  # every query keeps at least one key (itself)


def _conv(prompt_len, reply_len, tail_prompt=0):
    ids = list(range(100, 100 + prompt_len + reply_len + tail_prompt))
    flags = [False] * prompt_len + [True] * reply_len + [False] * tail_prompt
    return ids, flags


@pytest.mark.parametrize("fill", ["eos", "pad"])
def test_format_sft_loss_on_replies_only_and_block_multiples(fill):
    convs = [_conv(5, 3), _conv(16, 16), _conv(2, 30), _conv(3, 2, tail_prompt=4)]
    rows = format_sft(convs, max_seq_len=64, block_length=16, eos_id=EOS, pad_id=PAD, fill=fill)
    ds = SFTDataset(rows)
    assert ds.lengths() == [16, 32, 32, 16]
    for (ids, flags), i in zip(convs, range(len(ds))):
        item = ds[i]
        n = len(ids)
        assert item["input_ids"][:n].tolist() == ids
        assert item["loss_mask"][:n].tolist() == flags  # reply tokens exactly
        assert item["prompt_mask"][:n].tolist() == [not f for f in flags]  # the rest is never noised
        gap = slice(n, None)
        eos_fill = fill == "eos" and flags[-1]
        assert bool((item["input_ids"][gap] == (EOS if eos_fill else PAD)).all())
        assert bool((item["loss_mask"][gap] == eos_fill).all())
        assert bool((item["prompt_mask"][gap] != eos_fill).all())
        assert bool((item["doc_ids"][gap] == (0 if eos_fill else PAD_DOC)).all())
        assert not bool((item["loss_mask"] & item["prompt_mask"]).any())


def test_format_sft_too_long_policies():
    convs = [_conv(10, 10), _conv(40, 40), _conv(70, 5)]
    with pytest.raises(SequenceTooLongError, match="conversation 1 has 80 tokens, more than max_seq_len=64"):
        format_sft(convs, max_seq_len=64, block_length=16, eos_id=EOS, pad_id=PAD)
    dropped = format_sft(convs, max_seq_len=64, block_length=16, eos_id=EOS, pad_id=PAD, too_long="drop")
    assert len(dropped) == 1 and dropped.stats == {"conversations": 1, "truncated": 0, "dropped": 2}
    cut = format_sft(convs, max_seq_len=64, block_length=16, eos_id=EOS, pad_id=PAD, too_long="truncate")
    # the 80-token one is cut to 64 (still has reply tokens); the 75-token one loses its whole reply
    assert cut.stats == {"conversations": 2, "truncated": 1, "dropped": 1}
    row = SFTDataset(cut)[1]
    assert row["input_ids"].tolist() == list(range(100, 164)) and int(row["loss_mask"].sum()) == 24
    with pytest.raises(ValueError, match="no conversation left"):
        format_sft([_conv(70, 5)], max_seq_len=64, block_length=16, eos_id=EOS, pad_id=PAD, too_long="drop")


def test_sft_collator_pads_to_block_multiple_with_neutral_values():
    rows = format_sft([_conv(5, 3), _conv(20, 20)], max_seq_len=64, block_length=16, eos_id=EOS, pad_id=PAD)
    ds = SFTDataset(rows)
    batch = SFTCollator(pad_id=PAD, block_length=16)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 48) and batch["input_ids"].dtype == torch.long
    tail = (slice(0, 1), slice(16, None))
    assert bool((batch["input_ids"][tail] == PAD).all()) and bool(batch["prompt_mask"][tail].all())
    assert not bool(batch["loss_mask"][tail].any()) and bool((batch["doc_ids"][tail] == PAD_DOC).all())
    assert torch.equal(batch["loss_mask"][1], ds[1]["loss_mask"])
    fixed = SFTCollator(pad_id=PAD, block_length=16, pad_to=64)([ds[0]])
    assert fixed["input_ids"].shape == (1, 64)
    with pytest.raises(ValueError, match="more than pad_to"):
        SFTCollator(pad_id=PAD, block_length=16, pad_to=16)([ds[1]])
    with pytest.raises(ValueError, match="multiple of block_length"):
        SFTCollator(pad_id=PAD, block_length=16, pad_to=20)
    with pytest.raises(IndexError):
        ds[2]


def test_collators_work_in_a_dataloader_with_workers():
    """The collator must pickle for multi-process loading."""
    rows = format_sft([_conv(5, 3)] * 4, max_seq_len=64, block_length=16, eos_id=EOS, pad_id=PAD)
    loader = torch.utils.data.DataLoader(SFTDataset(rows), batch_size=2, num_workers=1,
                                         collate_fn=SFTCollator(PAD, 16))
    assert [b["input_ids"].shape for b in loader] == [(2, 16), (2, 16)]
