"""The training attention mask against a brute-force construction from its definition (LLaDA2.0 eq. 3)."""

from __future__ import annotations

import pytest
import torch

from components.training.objective import diffusion_logits, training_attention
from model.masks import block_diffusion_mask, window_block_mask


def brute_force_mask(L: int, B: int, docs: list[int] | None) -> torch.Tensor:
    """M[i, j] over x_t ⊕ x_0, written entry by entry from the paper's definition."""
    M = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    b = lambda k: k // B  # noqa: E731
    for i in range(2 * L):
        for j in range(2 * L):
            if i < L and j < L:
                ok = b(i) == b(j)  # noisy block attends its own noisy block
            elif i < L <= j:
                ok = b(i) > b(j - L)  # noisy block attends strictly earlier clean blocks
            elif i >= L and j >= L:
                ok = b(i - L) >= b(j - L)  # clean block attends clean blocks up to itself
            else:
                ok = False  # clean never attends noisy
            if docs is not None:
                ok = ok and docs[i % L] == docs[j % L]
            M[i, j] = ok
    return M


@pytest.mark.parametrize("L,B", [(8, 1), (8, 2), (12, 4), (12, 5), (16, 16), (6, 32)])
def test_block_diffusion_mask_equals_definition(L, B):
    got = block_diffusion_mask(L, B)
    assert got.shape == (1, 1, 2 * L, 2 * L)
    assert torch.equal(got[0, 0], brute_force_mask(L, B, None))


def test_document_mask_equals_definition():
    L, B = 12, 4
    docs = [[0] * 5 + [1] * 4 + [-1] * 3, [0] * 12]
    got = block_diffusion_mask(L, B, doc_ids=torch.tensor(docs))
    for row, d in enumerate(docs):
        assert torch.equal(got[row, 0], brute_force_mask(L, B, d))


def test_whole_row_block_uses_plain_document_mask():
    docs = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = training_attention(6, 6, docs)
    expected = torch.tensor([[docs[0, i] == docs[0, j] for j in range(6)] for i in range(6)])
    assert torch.equal(mask[0, 0], expected)
    assert training_attention(6, 6, None) is None


LM_SIZES = dict(vocab_size=50, hidden_size=32, intermediate_size=64, head_dim=16,
                mask_token_id=49)  # the `tiny_lm` fixture's fields


def test_single_block_fast_path_equals_doubled_input(tiny_lm):
    """With one block spanning the row, the MDLM path (x_t only) must equal the x_t ⊕ x_0 path."""
    lm = tiny_lm(**LM_SIZES).eval()
    x0 = torch.randint(0, 48, (2, 8))
    xt = torch.where(torch.rand(2, 8) < 0.5, torch.full_like(x0, 49), x0)
    docs = torch.tensor([[0] * 8, [0] * 3 + [1] * 5])
    with torch.no_grad():
        fast = diffusion_logits(lm, xt, x0, 8, docs)
        pos = torch.arange(8).expand(2, 8)
        full = lm(torch.cat([xt, x0], 1), attention_mask=block_diffusion_mask(8, 8, docs),
                  position_ids=torch.cat([pos, pos], 1)).logits[:, :8]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_noisy_block_sees_only_earlier_clean_blocks(tiny_lm):
    """Changing clean block k changes the noisy logits of blocks > k only; noisy block k's logits never."""
    lm = tiny_lm(**LM_SIZES).eval()
    L, B = 12, 4
    x0 = torch.randint(0, 48, (1, L))
    xt = torch.where(torch.rand(1, L) < 0.5, torch.full_like(x0, 49), x0)
    x0b = x0.clone()
    x0b[0, 4:8] = (x0b[0, 4:8] + 1) % 48  # clean block 1 changes
    with torch.no_grad():
        a = diffusion_logits(lm, xt, x0, B)
        b = diffusion_logits(lm, xt, x0b, B)
    diff = (a - b).abs().amax(-1)[0]  # (L,)
    assert diff[:8].max() < 1e-6  # noisy blocks 0 and 1 do not see clean block 1
    assert diff[8:].min() > 1e-6  # noisy block 2 does


def test_mbe_window_rows_see_what_the_decoders_mbe_pass_sees(tiny_lm):
    """A row in the MBE view (window = blocks 1..2 of 4) gets, at the window, the logits of the
    decoder's MBE pass: the drafted window bidirectional over the blocks before it (window_block_mask);
    the other rows and the blocks outside the window are read as usual."""
    lm = tiny_lm(**LM_SIZES).eval()
    L, B = 16, 4
    x0 = torch.randint(0, 48, (2, L))
    xt = x0.clone()
    xt[:, 4:12] = torch.where(torch.rand(2, 8) < 0.3, torch.randint(0, 48, (2, 8)), x0[:, 4:12])  # drafted window
    windows = torch.tensor([[1, 2], [1, 0]])  # row 0: window of blocks 1..2; row 1: none
    with torch.no_grad():
        got = diffusion_logits(lm, xt, x0, B, windows=windows)
        plain = diffusion_logits(lm, xt, x0, B)
        pos = torch.arange(12)[None]
        mbe_mask = window_block_mask(pos, pos, B, torch.ones(1, 12, dtype=torch.bool), torch.tensor([4]))
        decoder = lm(xt[:1, :12], attention_mask=mbe_mask, position_ids=pos).logits
    torch.testing.assert_close(got[0, 4:12], decoder[0, 4:12], atol=1e-5, rtol=1e-5)
    assert (got[0, 4:8] - plain[0, 4:8]).abs().max() > 1e-4  # block 1 now sees block 2
    torch.testing.assert_close(got[0, :4], plain[0, :4])
    torch.testing.assert_close(got[0, 12:], plain[0, 12:])
    torch.testing.assert_close(got[1], plain[1])
    # and entry by entry: row 0's window queries see noisy blocks 1..2 and clean block 0 only
    mask = block_diffusion_mask(L, B, windows=windows)
    for i in range(4, 12):
        assert mask[0, 0, i].nonzero().flatten().tolist() == [*range(4, 12), *range(L, L + 4)]
    assert torch.equal(mask[1, 0], brute_force_mask(L, B, None))
