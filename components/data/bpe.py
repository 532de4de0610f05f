"""Byte-level BPE tokenizer training with the special tokens a diffusion chat model needs.

Digits are split one per token before BPE: arithmetic and digit puzzles then have one token per
digit, which a tiny model learns far more easily than arbitrary multi-digit merges.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer as _Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from model.tokenizer import DEFAULT_SPECIAL_TOKENS, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, ROLE_TOKENS, Tokenizer


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    min_frequency: int = 2,
    special_tokens: tuple[str, ...] = DEFAULT_SPECIAL_TOKENS,
) -> Tokenizer:
    """Train on `texts`; ids 0.. are the special tokens (pad, eos, mask, system, user, assistant)."""
    backend = train_bpe_backend(texts, vocab_size, min_frequency, special_tokens)
    return Tokenizer(backend, mask_token=MASK_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                     role_tokens=dict(ROLE_TOKENS), source="trained byte-level BPE")


def train_bpe_backend(texts: Iterable[str], vocab_size: int, min_frequency: int,
                      special_tokens: tuple[str, ...]) -> _Backend:
    """The trained `tokenizers` backend alone, for callers that name their own special tokens
    (a stand-in of a released checkpoint uses the release's)."""
    if vocab_size < 256 + len(special_tokens):
        floor = 256 + len(special_tokens)
        raise ValueError(f"vocab_size must be >= {floor} (bytes + special tokens), got {vocab_size}")
    backend = _Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    n_texts = 0

    def counted() -> Iterable[str]:
        nonlocal n_texts
        for t in texts:
            n_texts += 1
            yield t

    backend.train_from_iterator(counted(), trainer=trainer)
    if n_texts == 0:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    return backend
