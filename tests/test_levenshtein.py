"""Levenshtein editing (model/levenshtein.py): LCS labels, the decoding rule, the edit-control rows."""

import random

import pytest
import torch

from model import ConfigError, DiffusionLM, ModelConfig
from model.levenshtein import (
    DELETE,
    INSERT,
    KEEP,
    SUBSTITUTE,
    add_edit_controls,
    apply_block_edits,
    check_edit_thresholds,
    edit_decisions,
    edit_labels,
    lcs_anchors,
    levenshtein_step,
    real_token_choice,
)

M, DEL, INS = 0, 98, 99  # mask and edit-control ids of the hand-worked cases
FILLER = 97  # a real token in no target: what a mask whose best choice is a control gets filled with


def labels(draft, target):
    out = edit_labels(draft, target, mask_id=M, delete_id=DEL, insert_id=INS)
    return "".join(out.ops), list(out.labels)


# --------------------------------------------------------------------------- hand-worked labels
def test_all_equal_keeps_everything():
    assert labels([1, 2, 3, 4], [1, 2, 3, 4]) == ("KKKK", [1, 2, 3, 4])


def test_a_skipped_token_inserts_before_the_next_anchor_and_deletes_the_surplus_tail():
    # 2 is missing: one INSERT on 3 (the anchor after the gap); 5 follows the last anchor 4
    assert labels([1, 3, 4, 5], [1, 2, 3, 4]) == ("KIKD", [1, INS, 4, DEL])


def test_a_duplicated_token_deletes_one_copy():
    # the earlier copy is deleted (ties prefer the later match as the anchor)
    assert labels([1, 2, 2, 3], [1, 2, 3, 4]) == ("KDKK", [1, DEL, 2, 3])


def test_a_run_shifted_right_inserts_at_its_start():
    assert labels([2, 3, 4, 5], [1, 2, 3, 4]) == ("IKKD", [INS, 3, 4, DEL])


def test_a_run_shifted_left_deletes_the_extra_token():
    assert labels([1, 9, 2, 3], [1, 2, 3, 4]) == ("KDKK", [1, DEL, 2, 3])


def test_aligned_gap_positions_substitute_and_surplus_ones_delete():
    assert labels([1, 7, 8, 4], [1, 2, 3, 4]) == ("KSSK", [1, 2, 3, 4])
    # target gap [2] against draft gap [7, 8]: 7 pairs with 2, 8 is surplus
    assert labels([1, 7, 8, 3], [1, 2, 3, 4]) == ("KSDK", [1, 2, DEL, 3])


def test_one_insert_per_gap_per_round():
    # draft gap empty, target gap [2, 3]: a single INSERT this round
    ops, lab = labels([1, 4, 5, 6], [1, 2, 3, 4])
    assert ops == "KIDD" and lab.count(INS) == 1


def test_no_anchor_deletes_everything():
    assert labels([7, 8, 9, 6], [1, 2, 3, 4]) == ("DDDD", [DEL] * 4)


def test_masks_only_errors_give_the_plain_targets():
    # "the first round uses ordinary target-token supervision": masks alone never need a structural edit
    assert labels([M, M, M, M], [1, 2, 3, 4]) == ("KKKK", [1, 2, 3, 4])
    assert labels([1, M, M, 4], [1, 2, 3, 4]) == ("KKKK", [1, 2, 3, 4])


def test_a_mask_anchor_takes_the_nearest_feasible_index_on_the_previous_diagonal():
    # backtracking matches the mask to y[2] = 3, which would make it an insertion site (for the 2 before
    # it) and delete 9; on 1's diagonal it takes y[1] = 2 and 9 becomes the substitution 9 -> 3
    assert lcs_anchors([1, M, 9, 4], [1, 2, 3, 4], M) == [(0, 0), (1, 2), (3, 3)]
    assert labels([1, M, 9, 4], [1, 2, 3, 4]) == ("KKSK", [1, 2, 3, 4])
    # clamped: no room between the anchors 1 and 3 for the diagonal index, the mask takes the last free one
    assert labels([1, 7, M, 3], [1, 2, 3, 4]) == ("KDKK", [1, DEL, 2, 3])
    # masks before the first real anchor with no room left are surplus
    assert labels([M, M, 1, 2], [1, 2, 3, 4]) == ("DDKK", [DEL, DEL, 1, 2])


def test_lcs_treats_masks_as_wildcards_but_prefers_exact_matches():
    assert lcs_anchors([1, M, 2], [1, 2, 3], M) == [(0, 0), (2, 1)]
    assert len(lcs_anchors([M, M, M], [4, 5, 6], M)) == 3


# --------------------------------------------------------------------------- brute force
def wildcard_lcs(x, y):
    f = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            match = x[i - 1] == M or x[i - 1] == y[j - 1]
            f[i][j] = max(f[i - 1][j], f[i][j - 1], f[i - 1][j - 1] + 1 if match else 0)
    return f[-1][-1]


def levenshtein(x, y):
    f = list(range(len(y) + 1))
    for i in range(1, len(x) + 1):
        prev, f[0] = f[0], i
        for j in range(1, len(y) + 1):
            cost = 0 if x[i - 1] == M or x[i - 1] == y[j - 1] else 1
            prev, f[j] = f[j], min(f[j] + 1, f[j - 1] + 1, prev + cost)
    return f[-1]


def random_pair(rng, m):
    """A target over a small alphabet (so repeats happen) and a draft made from it by random
    deletions, duplications, substitutions and masks, cut/padded back to length m."""
    y = [rng.randint(1, 6) for _ in range(m)]
    x = list(y)
    for _ in range(rng.randint(0, 4)):
        kind, i = rng.choice("dism"), rng.randrange(len(x)) if x else 0
        if kind == "d" and x:
            del x[i]
        elif kind == "i":
            x.insert(i, x[i] if x and rng.random() < 0.5 else rng.randint(1, 6))
        elif kind == "s" and x:
            x[i] = rng.randint(1, 6)
        elif x:
            x[i] = M
    x = (x + [rng.randint(1, 6) for _ in range(m)])[:m]
    return x, y


def one_round(x, y):
    """The decode rule driven by the labels as a perfect model: fills and substitutions write the label
    (a mask labelled with a control gets a real filler, as `real_token_choice` would give), then
    `levenshtein_step` applies the structural labels."""
    lab = torch.tensor(edit_labels(x, y, mask_id=M, delete_id=DEL, insert_id=INS).labels)
    cur = torch.tensor(x)
    real = lab < FILLER
    after = torch.where(real, lab, torch.where(cur == M, torch.full_like(cur, FILLER), cur))
    written = after != cur
    step = levenshtein_step(after, lab, torch.ones(len(x)), mask_id=M, delete_id=DEL, insert_id=INS,
                            delete_threshold=0.5, insert_threshold=0.5, written=written)
    return step.tokens.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_random_pairs_labels_relate_to_the_edit_distance_and_repair_the_draft(seed):
    rng = random.Random(seed)
    for _ in range(150):
        m = rng.randint(1, 10)
        x, y = random_pair(rng, m)
        out = edit_labels(x, y, mask_id=M, delete_id=DEL, insert_id=INS)
        lcs, dist = wildcard_lcs(x, y), levenshtein(x, y)
        keeps = out.ops.count(KEEP)
        # the anchors are a longest common subsequence and only they keep or insert
        assert keeps + out.ops.count(INSERT) == lcs, (x, y, out.ops)
        # every non-anchor position is a substitution or deletion: m - LCS of them, a lower bound of
        # the edit distance that is at most twice as small (delete + insert per pair)
        assert out.ops.count(SUBSTITUTE) + out.ops.count(DELETE) == m - lcs
        assert m - lcs <= dist <= 2 * (m - lcs)
        assert out.num_edits >= dist / 2
        # fixed length: never more inserts than deletes, so nothing is truncated
        assert out.ops.count(INSERT) <= out.ops.count(DELETE)
        # a mask is never an insertion site, and K/S targets are strictly increasing
        assert not any(op == INSERT and t == M for op, t in zip(out.ops, x))
        sig = [s for s in out.sigma if s is not None]
        assert sig == sorted(set(sig))
        # repeated rounds of the decode rule reach the target: each round deletes surplus tokens, opens
        # one missing slot per gap or fills masks; 2m + 2 is a loose bound (m + 1 is the most seen)
        cur, rounds = x, 0
        while cur != y:
            cur, rounds = one_round(cur, y), rounds + 1
            assert rounds <= 2 * m + 2, (x, y, cur)
        assert edit_labels(y, y, mask_id=M, delete_id=DEL, insert_id=INS).ops == (KEEP,) * m


def test_a_skip_is_repaired_in_two_rounds():
    x, y = [1, 3, 4, 5], [1, 2, 3, 4]
    first = one_round(x, y)
    assert first == [1, M, 3, 4]
    assert one_round(first, y) == y


# --------------------------------------------------------------------------- decoding rule
def reference_apply(block, delete, insert):
    out = []
    for t, d, i in zip(block, delete, insert):
        if d:
            continue
        out += [M, t] if i else [t]
    return (out + [M] * len(block))[:len(block)]


def test_apply_matches_the_list_reference_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        rows, m = 5, int(torch.randint(1, 12, (1,), generator=gen))
        block = torch.randint(1, 9, (rows, m), generator=gen)
        delete = torch.rand(rows, m, generator=gen) < 0.3
        insert = (torch.rand(rows, m, generator=gen) < 0.3) & ~delete
        res = apply_block_edits(block, delete, insert, mask_id=M)
        for r in range(rows):
            assert res.tokens[r].tolist() == reference_apply(block[r].tolist(), delete[r].tolist(), insert[r].tolist())
            # every non-mask output came from its source position
            src = res.source[r]
            assert torch.equal(res.tokens[r][src >= 0], block[r][src[src >= 0]])
            assert bool((res.tokens[r][src < 0] == M).all())


def test_delete_shifts_left_and_pads_insert_expands_and_truncates():
    block = torch.tensor([1, 2, 3, 4])
    t = lambda d, i: apply_block_edits(block, torch.tensor(d), torch.tensor(i), mask_id=M).tokens.tolist()  # noqa: E731
    assert t([0, 1, 0, 0], [0, 0, 0, 0]) == [1, 3, 4, M]
    assert t([0, 0, 0, 0], [0, 1, 0, 0]) == [1, M, 2, 3]
    # both on one position: the deletion wins
    assert t([0, 1, 0, 0], [0, 1, 0, 0]) == [1, 3, 4, M]


def test_decisions_follow_thresholds_and_spare_masks_prompt_and_written_positions():
    block = torch.tensor([5, 6, M, 7, 8, 9])
    tokens = torch.tensor([DEL, DEL, DEL, INS, INS, DEL])
    conf = torch.tensor([0.9, 0.9, 0.99, 0.7, 0.95, 0.9])
    protected = torch.tensor([True, False, False, False, False, False])
    written = torch.tensor([False, False, False, False, False, True])
    delete, insert = edit_decisions(block, tokens, conf, mask_id=M, delete_id=DEL, insert_id=INS,
                                    delete_threshold=0.8, insert_threshold=0.8, protected=protected, written=written)
    assert delete.tolist() == [False, True, False, False, False, False]
    assert insert.tolist() == [False, False, False, False, True, False]
    step = levenshtein_step(block, tokens, conf, mask_id=M, delete_id=DEL, insert_id=INS, delete_threshold=0.8,
                            insert_threshold=0.8, protected=protected, written=written)
    assert step.tokens.tolist() == [5, M, 7, M, 8, 9] and step.num_edits.tolist() == 2
    # a threshold above 1 turns that edit off
    delete, _ = edit_decisions(block, tokens, conf, mask_id=M, delete_id=DEL, insert_id=INS,
                               delete_threshold=1.5, insert_threshold=0.8)
    assert not delete.any()


def test_real_token_choice_never_picks_a_control_and_leaves_real_logits_alone():
    logits = torch.tensor([[0.0, 1.0, 5.0, 4.0], [3.0, 1.0, 0.0, 2.0]])
    masked = real_token_choice(logits, [2, 3])
    assert masked.argmax(-1).tolist() == [1, 0]
    assert torch.equal(masked[:, :2], logits[:, :2])
    assert torch.equal(masked[:, :2].softmax(-1), logits[:, :2].softmax(-1))


# --------------------------------------------------------------------------- vocabulary rows
def tiny(**kw):
    return ModelConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, mask_token_id=2,
                            eos_token_id=1, pad_token_id=0, **kw)


@pytest.mark.parametrize("tied", [False, True])
def test_added_rows_leave_every_real_logit_unchanged(tied):
    torch.manual_seed(0)
    lm = DiffusionLM(tiny(tie_word_embeddings=tied)).eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = lm(ids).logits
        assert add_edit_controls(lm) == (64, 65)
        after = lm(ids).logits
    assert lm.config.vocab_size == 66 and after.shape[-1] == 66
    assert torch.equal(after[..., :64], before)
    # with the controls left out of the choice, the confidences are the model's without the rows
    assert torch.equal(real_token_choice(after, [64, 65]).softmax(-1)[..., :64], before.softmax(-1))
    assert add_edit_controls(lm) == (64, 65) and lm.config.vocab_size == 66  # idempotent
    assert (lm.lm_head.weight is lm.model.word_embeddings.weight) == tied


def test_rows_survive_a_save_and_load(tmp_path):
    lm = DiffusionLM(tiny())
    add_edit_controls(lm)
    lm.save_pretrained(tmp_path)
    back = DiffusionLM.from_pretrained(tmp_path)
    assert (back.config.delete_token_id, back.config.insert_token_id, back.config.vocab_size) == (64, 65, 66)
    assert torch.equal(back.lm_head.weight, lm.lm_head.weight)


def test_a_config_without_controls_saves_without_the_fields():
    data = tiny().to_dict()
    assert "delete_token_id" not in data and "insert_token_id" not in data


def test_bad_control_ids_fail_in_one_line():
    with pytest.raises(ConfigError, match="set together"):
        tiny(delete_token_id=10)
    with pytest.raises(ConfigError, match="must differ"):
        tiny(delete_token_id=2, insert_token_id=10)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        tiny(delete_token_id=10, insert_token_id=64)


def test_a_threshold_on_a_model_without_rows_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^DecodeConfig.delete_threshold=0.9 needs a model with DELETE/INSERT rows") as err:
        check_edit_thresholds(tiny(), 0.9, None)
    assert "\n" not in str(err.value)
    check_edit_thresholds(tiny(), None, None)  # off: nothing to check
    check_edit_thresholds(tiny(delete_token_id=62, insert_token_id=63), 0.9, 0.8)
    with pytest.raises(ValueError, match="insert_threshold must be >= 0"):
        check_edit_thresholds(tiny(delete_token_id=62, insert_token_id=63), 0.9, -1)


def test_edit_distance_matches_the_brute_force():
    from model.levenshtein import edit_distance

    rng = random.Random(7)
    for _ in range(300):
        x, y = random_pair(rng, rng.randint(0, 8))
        assert edit_distance(x, y, M) == levenshtein(x, y)
    assert edit_distance([1, 2], [], M) == 2 and edit_distance([M, M], [5, 6], M) == 0


def test_a_block_edit_records_what_it_did_per_row():
    block = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    delete = torch.tensor([[False, True, False, False], [False] * 4])
    insert = torch.tensor([[False, False, False, True], [False] * 4])
    res = apply_block_edits(block, delete, insert, mask_id=M)
    rec = res.record(0, block, start=8)
    assert (rec.start, rec.before, rec.deleted, rec.inserted) == (8, (1, 2, 3, 4), (1,), (3,))
    assert res.record(1, block, start=8) is None
