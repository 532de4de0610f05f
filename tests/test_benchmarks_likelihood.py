"""benchmarks.likelihood_table on a tiny random checkpoint: the near misses and the table's shape."""

from __future__ import annotations

import re

import pytest
import torch

from benchmarks import likelihood_table

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", range(5))
def test_near_misses_are_wrong_answers_of_the_same_length(seed):
    g = torch.Generator().manual_seed(seed)
    truth = [5, 6, 6, 7, 9, 11, 12]
    misses = likelihood_table.near_misses(truth, g)
    assert set(misses) == set(likelihood_table.NEAR_MISSES)
    for kind, wrong in misses.items():
        assert len(wrong) == len(truth) and wrong != truth, kind
    assert sorted(misses["permutation"]) == sorted(truth) == sorted(misses["swap"])
    assert sum(a != b for a, b in zip(misses["swap"], truth)) == 2
    changed = [i for i, (a, b) in enumerate(zip(misses["one_token"], truth)) if a != b]
    assert len(changed) == 1 and misses["one_token"][changed[0]] in truth
    assert likelihood_table.near_misses([4, 4, 4], g) == {}  # nothing distinct to move


def test_table_on_a_random_checkpoint(tmp_path, capsys):
    from components.data.bpe import train_bpe_tokenizer
    from model import DiffusionLM, ModelConfig

    lines = [f"sort: {' '.join(str((i * 7 + k) % 10) for k in range(12))}" for i in range(40)]
    tok = train_bpe_tokenizer(lines, vocab_size=320, min_frequency=1)
    torch.manual_seed(0)
    lm = DiffusionLM(ModelConfig.tiny(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                      max_position_embeddings=256, mask_token_id=tok.mask_id,
                                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    lm.save_pretrained(tmp_path)
    tok.save(tmp_path)
    assert likelihood_table.main(["--model", str(tmp_path), "--tasks", "sort16", "--num", "3", "--seeds", "2",
                                  "--estimators", "crn:2", "left_to_right", "--text"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"sort16: 3 items, generation accuracy \(quality, greedy\) [01]\.\d{3}", out)
    crn = re.search(r"crn:2\s+2\.0((\s+[01]\.\d{3}\s+±[01]\.\d{3}){4})", out)
    assert crn, out
    ltr = re.search(r"left_to_right\s+(\d+\.\d)", out)
    assert ltr and float(ltr.group(1)) >= 8  # one forward per answer token of the fullest block (8+ digits)
    assert len(re.findall(r"reply_lstrip=(true|false)", out)) == 4
    assert "prefers the truth in" in out


def test_unknown_estimator_is_one_line():
    with pytest.raises(SystemExit, match="expected one of"):
        likelihood_table.parse_estimators(["elbo:8"])
    with pytest.raises(SystemExit, match="needs a sample count"):
        likelihood_table.parse_estimators(["crn"])
