"""Levenshtein editing in the decoder: equal to the reference loop extended with the same rules, exact
with the edit-control rows present but off, and replayable from its trajectories."""

import copy
import dataclasses

import pytest
import torch

from components import visualize
from components.bench.baselines import reference_generate
from components.presets import load_decode_config
from golden import require_golden
from model import DecodeConfig, DiffusionLM, ModelConfig, generate
from decoding_support import moves, replay
from model.levenshtein import add_edit_controls

pytestmark = pytest.mark.usefixtures("one_thread")

MASK, EOS = 119, 7
PROMPTS = [[3, 4, 5, 6, 8], list(range(20, 33)), [9]]  # lengths 5, 13, 1: each its own block offset
LEV = dict(gen_length=24, block_length=8, threshold=0.5, editing_threshold=0.7, max_post_steps=6,
           delete_threshold=0.3, insert_threshold=0.3)


def peaked_lm(seed=3) -> DiffusionLM:
    """A random model whose outputs are peaked enough that drafting commits several tokens and edits happen."""
    torch.manual_seed(seed)
    cfg = ModelConfig.tiny(vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=12, mask_token_id=MASK,
                           eos_token_id=EOS)
    lm = DiffusionLM(cfg).eval()
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p.normal_(0, p.shape[1] ** -0.5)
        lm.lm_head.weight.mul_(4.0)
        lm.lm_head.weight[MASK].zero_()
    return lm


@pytest.fixture(scope="module")
def lev_lm():
    """`peaked_lm` with the DELETE / INSERT rows, biased along one hidden direction (DELETE) and its
    opposite (INSERT), so that each wins at some positions and both edits fire."""
    lm = peaked_lm()
    delete, insert = add_edit_controls(lm)
    with torch.no_grad():
        direction = torch.randn(48, generator=torch.Generator().manual_seed(5)) * 0.8
        lm.lm_head.weight[delete] = direction
        lm.lm_head.weight[insert] = -direction
    return lm


def structural_counts(trajectories) -> tuple[int, int]:
    records = [r for t in trajectories for r in t.structural.values()]
    return sum(len(r.deleted) for r in records), sum(len(r.inserted) for r in records)


@pytest.mark.parametrize("settings,fired", [
    (dict(prompts=PROMPTS[:1]), "any"),
    (dict(), "both"),
    (dict(use_cache=False), "both"),
    (dict(speculative_verify=True), "both"),
    (dict(speculative_verify=True, use_cache=False), "both"),
    (dict(static_shapes=True), "both"),
    (dict(static_shapes=True, speculative_verify=True), "both"),
    (dict(eos_early_stop=True, num_to_transfer=2), "any"),
    (dict(delete_threshold=None), "insertions"),
    (dict(insert_threshold=None), "deletions"),
    (dict(finish_threshold=0.3), "any"),
    (dict(finish_threshold=0.3, speculative_verify=True), "any"),
], ids=["batch1", "batched", "nocache", "speculative", "speculative-nocache", "static", "static-speculative",
        "eos-stop", "insert-only", "delete-only", "finish", "finish-speculative"])
def test_decoder_equals_the_reference_loop_with_levenshtein_on(lev_lm, settings, fired):
    settings = dict(settings)
    prompts = settings.pop("prompts", PROMPTS)
    cfg = DecodeConfig(**{**LEV, **settings}, record_trajectory=True)
    ours = generate(lev_lm, prompts, cfg)
    refs = [reference_generate(lev_lm, p, cfg) for p in prompts]
    assert ours.sequences == [r.sequences[0] for r in refs]
    assert ours.canvases == [r.canvases[0] for r in refs]
    assert ours.edits == [r.edits[0] for r in refs]
    assert ours.commits == [r.commits[0] for r in refs]
    assert ours.structural_edits == [r.structural_edits[0] for r in refs]
    if cfg.speculative_verify:  # a speculative draft saves the next block's first forward, never adds one
        assert all(o <= r.forwards[0] for o, r in zip(ours.forwards, refs))
        assert ours.forwards != [r.forwards[0] for r in refs]
    else:
        assert ours.forwards == [r.forwards[0] for r in refs]
    deletions, insertions = structural_counts(ours.trajectories)
    assert deletions + insertions == sum(ours.structural_edits) > 0  # else nothing structural was compared
    assert (deletions > 0 or fired in ("any", "insertions")) and (insertions > 0 or fired in ("any", "deletions"))
    assert cfg.delete_threshold is not None or deletions == 0
    assert cfg.insert_threshold is not None or insertions == 0
    assert all(MASK not in c and lev_lm.config.delete_token_id not in c and lev_lm.config.insert_token_id not in c
               for c in ours.canvases)  # no mask left, no control id ever written
    assert all(c[:len(p)] == p for c, p in zip(ours.canvases, prompts))  # the prompt never moves


def test_structural_edits_happen_only_in_post_steps_and_the_masks_they_make_are_drafted(lev_lm):
    res = generate(lev_lm, PROMPTS, DecodeConfig(**LEV, record_trajectory=True))
    for traj in res.trajectories:
        for i, record in traj.structural.items():
            step = traj.steps[i]
            assert step.kind == "post" and not step.m2t
            assert traj.mask_id not in record.before  # a post step: the block had no mask
            assert all(record.start + k >= traj.prompt_length for k in record.deleted + record.inserted)
            made = int((moves(record, MASK).tokens == MASK).sum())  # inserted slots and tail padding
            assert 0 < made <= len(record.deleted) + len(record.inserted)
            after = [s for s in traj.steps[i + 1:] if s.block == step.block]
            drafted = sum(len(s.m2t) for s in after if s.kind == "draft")
            assert after and after[0].kind == "draft" and drafted >= made  # the block goes on and fills them
    assert sum(len(t.structural) for t in res.trajectories) > 0


@pytest.mark.parametrize("settings", [dict(), dict(speculative_verify=True, use_cache=False),
                                      dict(mbe_window=1, speculative_verify=True), dict(temperature=0.8, seed=1)])
def test_trajectory_with_structural_edits_replays_to_the_final_canvas(lev_lm, settings):
    res = generate(lev_lm, PROMPTS, DecodeConfig(**LEV, **settings, record_trajectory=True))
    assert sum(res.structural_edits) > 0
    controls = (lev_lm.config.delete_token_id, lev_lm.config.insert_token_id)
    assert not any(t in controls for c in res.canvases for t in c)
    for traj, canvas in zip(res.trajectories, res.canvases):
        assert replay(traj) == canvas
        assert visualize.replay(traj)[-1].tokens == canvas


def test_live_view_follows_structural_edits(lev_lm):
    """The on_step view (components.generate_cli) applies each record as it comes, then follows the
    canvas where structural edits moved tokens; it ends on the final canvas, nothing left masked."""
    P = len(PROMPTS[1])
    frame = visualize.Frame(0, "start", 0, PROMPTS[1] + [MASK] * (40 - P),  # 13 + 24 rounded up to blocks
                            [visualize.PROMPT] * P + [visualize.MASKED] * (40 - P))
    followed = []

    def show(index, canvas, record):
        if index == 1:
            before = list(frame.tokens)
            visualize.apply_step(frame, record)
            visualize.follow_canvas(frame, canvas.tolist(), MASK)
            followed.append(frame.tokens != before and not record.m2t and not record.t2t)

    res = generate(lev_lm, PROMPTS, DecodeConfig(**LEV), on_step=show)
    assert res.structural_edits[1] > 0 and any(followed)  # some step changed the frame through the canvas alone
    assert frame.tokens == res.canvases[1] and visualize.MASKED not in frame.states


def test_max_reverts_history_follows_the_moved_tokens(lev_lm):
    """With max_reverts=0 no edit may put back a token its position held before, where a position's
    history moves with its token through deletions and insertions."""
    cfg = DecodeConfig(**{**LEV, "editing_threshold": 0.4}, max_reverts=0, record_trajectory=True)
    res = generate(lev_lm, PROMPTS, cfg)
    assert sum(res.structural_edits) > 0 and sum(res.edits) > 0
    for traj in res.trajectories:
        history = [set() if t == traj.mask_id else {t} for t in traj.initial_canvas]
        for i, step in enumerate(traj.steps):
            for pos, tok in step.m2t:
                history[pos].add(tok)
            for pos, _, new in step.t2t:
                assert new not in history[pos]
                history[pos].add(new)
            record = traj.structural.get(i)
            if record is not None:
                m = len(record.before)
                block = history[record.start:record.start + m]
                history[record.start:record.start + m] = [set(block[s]) if s >= 0 else set()
                                                          for s in moves(record, MASK).source.tolist()]
    # the same decode without the moving history would see reverts: the guard changed something
    free = generate(lev_lm, PROMPTS, dataclasses.replace(cfg, max_reverts=None))
    assert free.canvases != res.canvases


@pytest.mark.parametrize("settings", [
    dict(threshold=0.5, editing_threshold=0.7),
    dict(threshold=0.3, editing_threshold=0.6, num_to_transfer=2, max_post_steps=2, speculative_verify=True),
    dict(threshold=0.9, editing_threshold=0.95, eos_early_stop=True, use_cache=False, max_reverts=1),
])
def test_rows_present_but_off_decode_exactly_like_the_model_without_them(settings):
    lm = DiffusionLM.from_pretrained(require_golden())
    with_rows = copy.deepcopy(lm)
    add_edit_controls(with_rows)
    with torch.no_grad():  # rows a training run moved: with Levenshtein off they must still not matter
        with_rows.lm_head.weight[-2:] = torch.randn(2, with_rows.lm_head.weight.shape[1]) * 5
    prompts = [[11, 12, 13, 14, 15], list(range(30, 52)), [40]]
    cfg = DecodeConfig(block_length=8, gen_length=24, **settings)
    a, b = generate(lm, prompts, cfg), generate(with_rows, prompts, cfg)
    assert (a.sequences, a.forwards, a.edits, a.commits, a.canvases) == (
        b.sequences, b.forwards, b.edits, b.commits, b.canvases)
    assert sum(a.edits) + sum(a.commits) > 0


def test_a_threshold_on_a_model_without_rows_is_refused_in_one_line():
    lm = peaked_lm()
    for name in ("delete_threshold", "insert_threshold"):
        with pytest.raises(ValueError, match=rf"^DecodeConfig.{name}=0.5 needs a model with DELETE/INSERT rows") as err:
            generate(lm, PROMPTS, DecodeConfig(**{**LEV, "delete_threshold": None, "insert_threshold": None,
                                                  name: 0.5}))
        assert "\n" not in str(err.value)
        with pytest.raises(ValueError, match=rf"^DecodeConfig.{name}=0.5 needs"):
            reference_generate(lm, PROMPTS[0], DecodeConfig(**{**LEV, "delete_threshold": None,
                                                                "insert_threshold": None, name: 0.5}))
    with pytest.raises(ValueError, match=r"^DecodeConfig.insert_threshold must be >= 0"):
        DecodeConfig(insert_threshold=-0.1)


@pytest.mark.parametrize("preset", ["speedy", "quality"])
def test_presets_carry_the_levenshtein_keys_off(preset):
    cfg = load_decode_config(preset)
    assert cfg.delete_threshold is None and cfg.insert_threshold is None and not cfg.levenshtein
    on = load_decode_config(preset, overrides=["delete_threshold=0.8", "insert_threshold=0.9"])
    assert (on.delete_threshold, on.insert_threshold, on.levenshtein) == (0.8, 0.9, True)
    with pytest.raises(ValueError, match="delete_threshold"):
        load_decode_config(preset, overrides=["delete_threshold=-1"])
