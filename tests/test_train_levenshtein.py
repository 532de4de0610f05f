"""Levenshtein training blocks: structural corruption, LCS labels as targets, gradients into the new rows."""

import pytest
import torch

from components.config import REPO_ROOT, ConfigError
from components.training import run_training
from components.training.config import ObjectiveConfig
from components.training.corruption import levenshtein_corrupt, m2t_corrupt, noisable_positions, structural_noise
from components.training.objective import DraftEditObjective, stream_losses
from components.training.run import load_train_config
from model import DiffusionLM, ModelConfig
from model.levenshtein import DELETE, INSERT, add_edit_controls, edit_labels
from train_support import prepare_tiny_data, train_overrides

MASK, PAD, EOS, V = 2, 0, 1, 64
DEL, INS = V, V + 1  # the rows add_edit_controls appends
SPECIAL = {PAD, EOS, MASK}


def sft_batch(bsz=8, seed=0, length=24):
    """Prompt (never noised) + a reply over a small alphabet (repeats happen) + padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 9, (bsz, length), generator=g)
    prompt = torch.zeros(bsz, length, dtype=torch.bool)
    loss = torch.zeros(bsz, length, dtype=torch.bool)
    for r in range(bsz):
        p, n = 2 + r % 3, 18 + r % 5
        prompt[r, :p] = True
        loss[r, p:n] = True
        ids[r, n:] = PAD
        prompt[r, n:] = True
    return {"input_ids": ids, "prompt_mask": prompt, "loss_mask": loss}


def blocks_of(c, block):
    """(row, noisable positions) of every block of `c` that holds Levenshtein positions."""
    for r in range(c.x0.shape[0]):
        for start in range(0, c.x0.shape[1], block):
            idx = c.noisable[r, start:start + block].nonzero().flatten() + start
            if len(idx) and bool(c.levenshtein[r, idx].any()):
                yield r, idx


def test_structural_noise_keeps_length_and_makes_each_kind():
    x, m = list(range(10, 18)), 8
    deletions = {tuple(x[:i] + x[i + 1:] + [99]) for i in range(m)}
    duplications = {tuple((x[:i + 1] + x[i:])[:m]) for i in range(m - 1)}
    # a run shifted by one: one token gone, another repeated next to itself, the rest in order
    shifts = set()
    for i in range(m):
        rest = x[:i] + x[i + 1:]
        for k in range(m - 1):
            shifts.add(tuple(rest[:k + 1] + [rest[k]] + rest[k + 1:]))
    g = torch.Generator().manual_seed(0)
    seen = {}
    for _ in range(80):
        out = tuple(structural_noise(x, 99, 1, g))
        assert len(out) == m and out != tuple(x)
        kinds = [k for k, s in (("delete", deletions), ("duplicate", duplications), ("shift", shifts)) if out in s]
        assert kinds, out
        seen[kinds[0]] = True  # a duplication is also a shift whose deleted token is the last
    assert set(seen) == {"delete", "duplicate", "shift"}


def test_labels_of_corrupted_blocks_are_the_labeller_s_and_the_rest_is_untouched():
    b = sft_batch(16)
    noisable = noisable_positions(b["loss_mask"], b["prompt_mask"])
    g = torch.Generator().manual_seed(3)
    base = m2t_corrupt(b["input_ids"], noisable, mask_id=MASK, t_min=0.0, t_max=0.4, generator=g)
    c = levenshtein_corrupt(base, prob=0.6, max_ops=2, block_length=8, mask_id=MASK, delete_id=DEL, insert_id=INS,
                            exclude_ids=SPECIAL, generator=g)
    assert c.levenshtein is not None and c.levenshtein.any()
    outside = ~c.levenshtein
    assert torch.equal(c.xt[outside], base.xt[outside]) and torch.equal(c.targets[outside], c.x0[outside])
    assert torch.equal(c.m2t[outside], base.m2t[outside])
    assert not c.levenshtein[~noisable].any()  # prompt and padding are never in a Levenshtein block
    ops_seen = set()
    for r, idx in blocks_of(c, 8):
        out = edit_labels(c.xt[r, idx].tolist(), c.x0[r, idx].tolist(), mask_id=MASK, delete_id=DEL, insert_id=INS)
        assert c.targets[r, idx].tolist() == list(out.labels)
        shown = c.xt[r, idx]
        assert torch.equal(c.m2t[r, idx], shown == MASK)
        assert torch.equal(c.t2t[r, idx], (shown != MASK) & (c.targets[r, idx] != shown))
        ops_seen.update(out.ops)
    assert {DELETE, INSERT} <= ops_seen
    # every target is a real token or a control: nothing else is ever predicted
    assert bool(((c.targets < V) & (c.targets != MASK) | (c.targets == DEL) | (c.targets == INS)).all())


def test_off_draws_nothing_and_returns_the_same_corruption():
    b = sft_batch(4)
    noisable = noisable_positions(b["loss_mask"], b["prompt_mask"])
    g = torch.Generator().manual_seed(0)
    base = m2t_corrupt(b["input_ids"], noisable, mask_id=MASK, t_min=0.2, t_max=0.8, generator=g)
    state = g.get_state()
    assert levenshtein_corrupt(base, prob=0.0, max_ops=2, block_length=8, mask_id=MASK, delete_id=DEL, insert_id=INS,
                               exclude_ids=SPECIAL, generator=g) is base
    assert torch.equal(g.get_state(), state)


def tiny_lm():
    torch.manual_seed(0)
    lm = DiffusionLM(ModelConfig.tiny(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, mask_token_id=MASK,
                                      eos_token_id=EOS, pad_token_id=PAD))
    assert add_edit_controls(lm) == (DEL, INS)
    return lm


def test_the_loss_trains_the_delete_and_insert_rows():
    lm = tiny_lm()
    cfg = ObjectiveConfig(levenshtein_prob=1.0, t2t_stream_prob=1.0, t2t_rate_max=0.0)
    objective = DraftEditObjective(cfg, mask_id=MASK, vocab_size=V + 2, special_ids=SPECIAL, edit_ids=(DEL, INS))
    out = objective(lm, sft_batch(8), block_length=8, generator=torch.Generator().manual_seed(1))
    c = out.corruption
    assert bool((c.targets == DEL).any()) and bool((c.targets == INS).any())
    assert out.metrics["n_levenshtein"] > 0
    out.loss.backward()
    grad = lm.lm_head.weight.grad
    assert grad[DEL].abs().sum() > 0 and grad[INS].abs().sum() > 0


def test_streams_read_the_labels_not_x0():
    lm = tiny_lm()
    cfg = ObjectiveConfig(levenshtein_prob=1.0, t2t_stream_prob=1.0, t2t_rate_max=0.0)
    objective = DraftEditObjective(cfg, mask_id=MASK, vocab_size=V + 2, special_ids=SPECIAL, edit_ids=(DEL, INS))
    c = objective.corrupt(sft_batch(8), 8, torch.Generator().manual_seed(2))
    # logits that put all mass on the labels give zero T2T and keep loss; on x0 they do not
    perfect = torch.full((*c.x0.shape, V + 2), -30.0).scatter(-1, c.targets[..., None], 30.0)
    parts = stream_losses(perfect, c, "none")
    assert float(parts["t2t"]) < 1e-6 and float(parts["keep"]) < 1e-6
    on_x0 = torch.full((*c.x0.shape, V + 2), -30.0).scatter(-1, c.x0[..., None], 30.0)
    assert float(stream_losses(on_x0, c, "none")["t2t"]) > 1.0


def levenshtein_corruption(seed=2):
    cfg = ObjectiveConfig(levenshtein_prob=1.0, t2t_stream_prob=0.5, t2t_rate_max=0.2)
    objective = DraftEditObjective(cfg, mask_id=MASK, vocab_size=V + 2, special_ids=SPECIAL, edit_ids=(DEL, INS))
    c = objective.corrupt(sft_batch(8), 8, torch.Generator().manual_seed(seed))
    logits = torch.randn(*c.x0.shape, V + 2, generator=torch.Generator().manual_seed(seed))
    return c, logits


@pytest.mark.parametrize("weighting,normalizer", [("none", "pooled"), ("inv_t", "per_stream")])
def test_label_weight_one_is_the_plain_loss(weighting, normalizer):
    c, logits = levenshtein_corruption()
    plain = stream_losses(logits, c, weighting, normalizer)
    weighed = stream_losses(logits, c, weighting, normalizer, (DEL, INS), 1.0)
    for key in ("m2t", "t2t", "keep", "cap"):
        assert torch.equal(plain[key], weighed[key]), key


@pytest.mark.parametrize("weighting,normalizer", [("none", "pooled"), ("inv_t", "per_stream")])
def test_label_weight_scales_the_control_label_terms_and_nothing_else(weighting, normalizer):
    c, logits = levenshtein_corruption()
    targets = c.targets
    control = (targets == DEL) | (targets == INS)
    assert bool((control & c.t2t).any()) and bool((~control & c.t2t).any())  # both kinds in the T2T stream
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    w = 7.0
    per_position = torch.where(control, w, 1.0) * ce
    if weighting == "inv_t":
        m2t = (per_position / c.t)[c.m2t].sum() / c.noisable.sum()
    else:
        m2t = per_position[c.m2t].sum() / c.m2t.sum()  # the count, not the sum of weights, divides
    n_t2t, n_keep = (c.t2t.sum(), c.keep.sum()) if normalizer == "per_stream" else ((c.t2t | c.keep).sum(),) * 2
    parts = stream_losses(logits, c, weighting, normalizer, (DEL, INS), w)
    torch.testing.assert_close(parts["m2t"], m2t)
    torch.testing.assert_close(parts["t2t"], per_position[c.t2t].sum() / n_t2t)
    torch.testing.assert_close(parts["keep"], per_position[c.keep].sum() / n_keep)
    # the weight's whole effect is (w - 1) times the control-label terms
    plain = stream_losses(logits, c, weighting, normalizer)
    torch.testing.assert_close(parts["t2t"] - plain["t2t"], (w - 1) * ce[c.t2t & control].sum() / n_t2t)
    assert float(parts["n_control"]) == float((control & (c.m2t | c.t2t | c.keep)).sum()) > 0


def test_the_objective_reads_the_label_weight():
    batch, g = sft_batch(8), lambda: torch.Generator().manual_seed(3)
    losses = {}
    for w in (1.0, 5.0):
        cfg = ObjectiveConfig(levenshtein_prob=1.0, t2t_stream_prob=1.0, t2t_rate_max=0.0, levenshtein_label_weight=w)
        objective = DraftEditObjective(cfg, mask_id=MASK, vocab_size=V + 2, special_ids=SPECIAL, edit_ids=(DEL, INS))
        losses[w] = objective(tiny_lm(), batch, block_length=8, generator=g())
    assert float(losses[5.0].loss.detach()) > float(losses[1.0].loss.detach())  # the control rows start at zero: their CE is large
    assert losses[5.0].metrics["n_control"] == losses[1.0].metrics["n_control"] > 0


def test_levenshtein_without_the_rows_fails_in_one_line():
    with pytest.raises(ValueError, match=r"^train.objective.levenshtein_prob=0.5 needs a model with DELETE/INSERT rows"):
        DraftEditObjective(ObjectiveConfig(levenshtein_prob=0.5), mask_id=MASK, vocab_size=V, special_ids=SPECIAL)


@pytest.mark.parametrize("override,key", [
    ("objective.levenshtein_prob=1.5", "train.objective.levenshtein_prob: must be in [0, 1]"),
    ("objective.levenshtein_prob=-0.1", "train.objective.levenshtein_prob: must be in [0, 1]"),
    ("objective.levenshtein_max_ops=0", "train.objective.levenshtein_max_ops: must be an integer >= 1"),
    ("objective.levenshtein_label_weight=-1.0", "train.objective.levenshtein_label_weight: must be >= 0"),
    ("objective.levenshtein_label_weight=5.0", "train.objective.levenshtein_label_weight: is 5.0 but only Levenshtein blocks"),
])
def test_bad_levenshtein_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace(".", r"\.")):
        load_train_config(REPO_ROOT / "conf/train/sft.yaml", [override])


def test_levenshtein_with_mtf_is_refused():
    with pytest.raises(ConfigError, match=r"levenshtein_prob: needs train\.objective\.mtf_prob = 0"):
        load_train_config(REPO_ROOT / "conf/train/sft.yaml", ["objective.levenshtein_prob=0.3", "objective.mtf_prob=0.5"])


def test_levenshtein_under_lora_needs_the_head_adapted():
    with pytest.raises(ConfigError, match=r"levenshtein_prob: with train\.lora\.enabled the new DELETE/INSERT head rows"):
        load_train_config(REPO_ROOT / "conf/train/sft.yaml", ["objective.levenshtein_prob=0.3", "lora.enabled=true"])
    cfg = load_train_config(REPO_ROOT / "conf/train/sft.yaml", ["objective.levenshtein_prob=0.3", "lora.enabled=true",
                                                                "lora.target_modules=[query_key_value,lm_head]"])
    assert cfg.lora.enabled


def test_defaults_are_off():
    cfg = load_train_config(REPO_ROOT / "conf/train/sft.yaml")
    assert cfg.objective.levenshtein_prob == 0.0
    assert cfg.objective.levenshtein_label_weight == 1.0


def test_an_sft_run_with_levenshtein_blocks_exports_the_rows(tmp_path):
    prepared = prepare_tiny_data(tmp_path / "data")
    cfg = load_train_config(None, train_overrides(prepared.root, "sft", steps=3, objective__levenshtein_prob=0.5,
                                                  objective__t2t_stream_prob=0.5))
    result = run_training(cfg, tmp_path / "run")
    assert result["train/n_levenshtein"] > 0
    lm = DiffusionLM.from_pretrained(result["checkpoint_dir"])
    base = prepared.tokenizer.vocab_size
    assert (lm.config.delete_token_id, lm.config.insert_token_id, lm.config.vocab_size) == (base, base + 1, base + 2)
    assert lm.lm_head.weight[base:].abs().sum() > 0  # the rows moved off their zero start
