"""Each recipe in benchmarks/ end to end on a tiny random model and tiny data: its rows and columns, and what
must hold whatever the timings (identical tokens across decoder variants, equal likelihoods across estimator
forms, each variant trained with its own objective, gains that are final minus start)."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(random_checkpoint) -> Path:
    return random_checkpoint


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------ edit_table
def test_edit_table_reports_every_preset_with_editing_on_and_off_and_mbe(checkpoint, tmp_path, capsys):
    from benchmarks import edit_table
    from components.presets import preset_names

    out = tmp_path / "cells.json"
    assert edit_table.main(["--model", f"A={checkpoint}", "--model", f"A={checkpoint}", "--families", "sort",
                            "--n", "2", "--gen-length", "8", "--block-length", "4", "--mbe", "1", "--threads", "1",
                            "--json", str(out)]) == 0
    cells = json.loads(out.read_text())
    short = {"speedy": "S", "quality": "Q"}
    expected = {f"A|sort|{short.get(p, p)} {arm}" for p in preset_names() for arm in ("edit", "no-edit", "edit MBE1")}
    assert set(cells) == expected
    for runs in cells.values():
        assert len(runs) == 2  # the same label twice: two seeds of one arm
        for r in runs:
            assert 0 <= r["score"] <= 100 and r["tpf"] > 0 and finite(r["tps"])
            assert {"fw_draft", "fw_edit", "fw_verify", "fw_mbe", "edits_per_sample", "fixes", "breaks"} <= set(r)
    assert "mbe_earlier_fixes" in cells["A|sort|S edit MBE1"][0]
    text = capsys.readouterr().out
    assert "| A | sort | S edit |" in text and "| S/Q TPF (edit on) |" in text
    assert "MBE edits in earlier blocks" in text


def test_edit_table_grid_decodes_every_point_and_names_the_best_and_fastest(checkpoint, tmp_path, capsys):
    from benchmarks import edit_table

    out = tmp_path / "grid.json"
    assert edit_table.main(["--model", f"B={checkpoint}", "--families", "sort", "--presets", "quality", "--n", "2",
                            "--gen-length", "8", "--block-length", "4", "--grid", "threshold=0.5,0.9",
                            "--grid", "editing_threshold=0.9,1.01", "--threads", "1", "--json", str(out)]) == 0
    cells = json.loads(out.read_text())
    assert set(cells) == {f"B|sort|Q threshold={t} editing_threshold={e}" for t in (0.5, 0.9) for e in (0.9, 1.01)}
    text = capsys.readouterr().out
    assert "fastest within 3 points" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "fastest within 3 points" in line)
    (row,) = [line for line in lines[header + 2:] if line.startswith("| B | sort |")]  # one row per model x family
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[2].startswith("Q threshold=") and cols[5].startswith("Q threshold=")
    assert all(finite(float(c)) for c in (cols[3], cols[4], cols[6], cols[7], cols[8]))


def test_edit_table_sample_seed_draws_another_heldout_sample(checkpoint, monkeypatch, capsys):
    """Settings are chosen on one draw of the held-out split and reported on the default draw."""
    from benchmarks import common, edit_table

    drawn = []

    def spy(families, n, params=None, seed=common.HELDOUT_SEED):
        examples = common.heldout_examples(families, n, params, seed=seed)
        drawn.append((seed, [e.prompt for e in examples]))
        return examples

    monkeypatch.setattr(edit_table, "heldout_examples", spy)
    args = ["--model", f"A={checkpoint}", "--families", "sort", "--presets", "quality", "--n", "3",
            "--gen-length", "8", "--block-length", "4", "--threads", "1"]
    assert edit_table.main(args) == 0 and edit_table.main([*args, "--sample-seed", "7"]) == 0
    (default_seed, reported), (chosen_seed, validation) = drawn
    assert (default_seed, chosen_seed) == (common.HELDOUT_SEED, 7)
    assert reported != validation


def test_edit_table_attribution_traces_every_wrong_token_of_each_preset(checkpoint, tmp_path, capsys):
    from benchmarks import edit_table
    from components.edits import ERROR_CAUSES

    out = tmp_path / "attribution.json"
    assert edit_table.main(["--model", f"A={checkpoint}", "--model", f"A={checkpoint}", "--families", "sort",
                            "--presets", "speedy", "quality", "--n", "3", "--gen-length", "8", "--block-length", "4",
                            "--attribution", "--threads", "1", "--json", str(out)]) == 0
    cells = json.loads(out.read_text())
    assert set(cells) == {"A|sort|S edit", "A|sort|Q edit"}  # the presets as they are: editing on only
    for runs in cells.values():
        for r in runs:
            wrong = round(3 * (1 - r["score"] / 100))
            assert r["wrong_answers"] == wrong  # a random network: every answer it gets wrong is counted
            judged = r["wrong_answers"] - r["err_unjudged"]
            # each judged wrong answer has at least one wrong token and exactly one first cause
            assert sum(r[f"err_answers_{c}"] for c in ERROR_CAUSES) == judged
            assert sum(r[f"err_tokens_{c}"] for c in ERROR_CAUSES) >= judged
            assert len(r["never_fired_confidence"]) == r["err_tokens_never_fired"]
    text = capsys.readouterr().out
    assert "% of wrong tokens: accepted draft / edit never fired / broken by edit / wrong edit / length/EOS" in text
    rows = [line for line in text.splitlines() if line.startswith("| A | sort | S edit |")]
    assert len(rows) == 2  # the main table's row and the attribution row
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "| S/Q TPF (edit on) |" in line)
    summary = lines[header + 2].strip("|").split("|")  # S against Q without the editing-off arm
    assert summary[0].strip() == "A" and finite(float(summary[2].split()[0])) and summary[4].strip() == "-"


def test_edit_table_rejects_a_field_that_is_not_a_decode_setting(checkpoint, capsys):
    from benchmarks import edit_table

    with pytest.raises(SystemExit):
        edit_table.main(["--model", f"A={checkpoint}", "--grid", "nope=1,2"])
    assert "'nope' is not a DecodeConfig field" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ speed
TINY_RANDOM = ["--vocab", "64", "--hidden", "32", "--intermediate", "64", "--layers", "2", "--heads", "2",
               "--kv-heads", "1", "--head-dim", "16"]
SHORT_DECODE = ["--gen-length", "8", "--block-length", "4", "--prompts", "3", "--min-prompt", "3", "--max-prompt", "6",
                "--batch", "2"]


def _run_speed(tmp_path, *argv) -> dict:
    from benchmarks import speed

    out = tmp_path / f"{argv[0]}.json"
    code = speed.main([*argv, "--json", str(out)])
    record = json.loads(out.read_text())
    record["code"] = code
    return record


def test_speed_decode_compares_every_variant_token_for_token(tmp_path):
    res = _run_speed(tmp_path, "decode", *TINY_RANDOM, *SHORT_DECODE, "--repeats", "2", "--floor-repeats", "2")
    assert res["code"] == 0 and res["all_identical"] and res["reference_forwards_equal"]
    assert [r["variant"] for r in res["rows"]] == ["(a) reference loop", "(b0) cache, batch 1, no spec",
                                                   "(b) cache, batch 1", "(c0) cache, batch 2, no spec",
                                                   "(c) cache, batch 2"]
    for r in res["rows"]:
        assert r["tokens"] > 0 and r["forwards"] > 0 and finite(r["tps"]) and len(r["wall_s_all"]) in (1, 2)
    assert all(finite(v) and v > 0 for v in res["roofline"].values())


def test_speed_profile_splits_network_time_from_decoder_time(tmp_path):
    res = _run_speed(tmp_path, "profile", *TINY_RANDOM, *SHORT_DECODE)
    assert [r["variant"] for r in res["rows"]] == [f"batch {b}, speculative {s}" for b in (1, 2) for s in ("off", "on")]
    for r in res["rows"]:
        assert 0 < r["network_s"] <= r["wall_s"] and r["network_calls"] > 0 and r["computed_per_generated"] >= 1


def test_speed_forward_times_every_precision(tmp_path):
    res = _run_speed(tmp_path, "forward", *TINY_RANDOM, "--block-length", "4", "--batch", "2", "--window", "16",
                     "--repeats", "1", "--int8", "int8_dynamic_fbgemm")
    assert [r["precision"] for r in res["rows"]] == ["fp32", "bf16", "fp8 (dequantized, fp32 kernels)",
                                                     "int8_dynamic_fbgemm"]
    fp32 = res["rows"][0]
    assert fp32["max_logit_diff"] == 0.0 and fp32["x_fp32"] == [1.0, 1.0]
    for r in res["rows"]:
        assert set(r["ms"]) == {"1x4", "2x4", "1x16"} and all(finite(v) for v in r["ms"].values())
        assert finite(r["max_logit_diff"])


def test_speed_train_reports_every_objective_variant(tmp_path):
    from train_support import TINY_MODEL, data_overrides

    data = [f"--data-set={o}" for o in data_overrides(tmp_path / "data")[1:]]
    sets = [f"--set={o}" for o in [*TINY_MODEL, "trainer.batch_size=4", "trainer.block_length=8"]]
    res = _run_speed(tmp_path, "train", "--steps", "2", "--data-cache", str(tmp_path / "data"), *data, *sets)
    assert [r["variant"] for r in res["rows"]] == ["m2t", "m2t+t2t", "m2t+t2t+mtf(every step)"]
    assert res["rows"][0]["cost_vs_m2t"] == 1.0
    assert all(finite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 for r in res["rows"])


def test_speed_estimator_gives_the_same_likelihoods_three_ways(tmp_path):
    res = _run_speed(tmp_path, "estimator", "--blocks", "2", "3", "--block-length", "4", "--batch", "2",
                     "--prompt-length", "5", "--repeats", "1", "--loop-repeats", "1", "--hidden", "32", "--layers", "1",
                     "--vocab", "64")
    assert [r["blocks"] for r in res["rows"]] == [2, 3]
    for r in res["rows"]:
        assert r["max_abs_diff"] < 1e-3
        assert all(finite(r[k]) for k in ("loop_over_vector", "blocks_over_vector", "train_blocks_over_vector",
                                          "train_edit_over_vector"))


# ------------------------------------------------------------------------------------------ rl_table
RL_FAST = ["max_steps=2", "prompts.train_size=8", "prompts.eval_size=4", "prompts.params={}",
           "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.gen_length=8", "rollout.decode.overrides.block_length=4",
           "eval.every_steps=1", "optim.inner_steps=1", "trainer.num_threads=1", "checkpoint_every_steps=0"]


def test_rl_table_run_trains_one_arm_per_noise_level_and_reports_each(checkpoint, tmp_path, capsys):
    from benchmarks import rl_table

    out = tmp_path / "ebpo"
    assert rl_table.main(["run", "--model", str(checkpoint), "--out", str(out), "--levels", "1", "2",
                          "--minutes", "0", *RL_FAST]) == 0
    table = json.loads((out / "table.json").read_text())
    assert set(table) == {"N=1", "N=2"}
    for label, n in (("N=1", 1), ("N=2", 2)):
        (row,) = table[label]
        assert row["folder"] == str(out / f"levels_{n}")
        assert [p["step"] for p in row["curve"]] == [0, 1, 2] and row["steps"] == 2
        assert row["gain"] == pytest.approx(row["final"] - row["start"])
        assert 0 <= row["start"] <= 100 and row["peak"] >= max(row["start"], row["final"])
    config = (out / "levels_2" / "config.yaml").read_text()
    assert "num_levels: 2" in config and "permute_advantages: false" in config
    assert "| N=2 | 1 |" in capsys.readouterr().out


def _fake_run(folder: Path, accuracies: list[float]) -> str:
    folder.mkdir(parents=True)
    curve = [{"step": 10 * i, "accuracy": a, "edits_per_sample": 0.5, "edit_fixes": 1, "edit_breaks": 2}
             for i, a in enumerate(accuracies)]
    (folder / "eval_curve.json").write_text(json.dumps(curve))
    (folder / "summary.json").write_text(json.dumps({"metrics": {"rl/wall_seconds": 120.0, "rl_eval/tpf_ratio": 0.9}}))
    return str(folder)


def test_rl_table_report_pools_seeds_of_one_label_and_measures_the_last_third(tmp_path, capsys):
    from benchmarks import rl_table

    a = _fake_run(tmp_path / "a", [0.10, 0.30, 0.50, 0.40])  # steps 0..30: the last third starts at step 20
    b = _fake_run(tmp_path / "b", [0.20, 0.20, 0.30, 0.40])
    c = _fake_run(tmp_path / "c", [0.50, 0.40])
    table = rl_table.main(["report", "--run", f"arm={a}", "--run", f"arm={b}", "--run", f"ctl={c}",
                           "--json", str(tmp_path / "t.json")])
    assert table == 0
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["gain"] for r in rows["arm"]] == pytest.approx([30.0, 20.0])
    assert [r["last_third_change"] for r in rows["arm"]] == pytest.approx([-10.0, 10.0])
    assert rows["arm"][0]["peak"] == pytest.approx(50.0) and rows["ctl"][0]["gain"] == pytest.approx(-10.0)
    assert "| arm | 2 | 15.0 ± 7.1 | 40.0 ± 0.0 | +30.0 / +20.0 | +25.0 ± 7.1 |" in capsys.readouterr().out


def test_rl_table_names_a_folder_that_is_not_a_run(tmp_path):
    from benchmarks import rl_table

    with pytest.raises(SystemExit, match="summary.json not found"):
        rl_table.main(["report", "--run", f"x={tmp_path}"])


# ------------------------------------------------------------------------------------------ train_table
def test_every_train_table_variant_resolves_to_valid_training_configs():
    from benchmarks import train_table
    from components.config import CONF_DIR
    from components.training import load_train_config

    for variant in train_table.VARIANTS:
        both, sft_only = train_table.variant_overrides(variant, 8)
        load_train_config(CONF_DIR / "train" / "cpt.yaml", both)
        load_train_config(CONF_DIR / "train" / "sft.yaml", [*both, *sft_only])
    assert train_table.variant_overrides("t2t_stream_mtf_late", 8)[1] == ["objective.mtf_prob=0.5",
                                                                           "objective.mtf_start_step=4"]


def test_train_table_names_a_bad_variants_file(tmp_path):
    from benchmarks import train_table

    bad = tmp_path / "v.yaml"
    bad.write_text("bases: {none: []}\nvariants:\n  x: {base: nope}\n")
    with pytest.raises(SystemExit, match=r"variants\.x\.base: 'nope' is not one of bases \['none'\]"):
        train_table.load_variants(bad)
    bad.write_text("bases: {none: []}\nvariants:\n  x: {sft_only: []}\n")
    with pytest.raises(SystemExit, match=r"variants\.x: unknown key\(s\) \['sft_only'\]"):
        train_table.load_variants(bad)


def test_train_table_trains_each_variant_with_its_objective_and_reports_every_setting(tmp_path, capsys):
    import yaml

    from benchmarks import train_table
    from train_support import data_overrides

    out = tmp_path / "tt"
    data = [f"--data-set={o}" for o in data_overrides(tmp_path)[1:]]
    size = ("{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
            "num_key_value_heads: 1, head_dim: 16, max_position_embeddings: 128}")
    common = ["--out", str(out), "--cpt-steps", "2", "--sft-steps", "4", "--sft-batch", "4", "--block", "8",
              "--gen-length", "8", "--eval-n", "2", "--families", "sum", "permutation", "--sft-examples", "30",
              "--model-overrides", size, *data, "--set=trainer.log_every_steps=1"]
    for variant in ("m2t", "t2t_stream_mtf_late"):
        assert train_table.main(["run", "--variant", variant, *common]) == 0
    sft = yaml.safe_load((out / "t2t_stream_mtf_late" / "sft" / "train_config.yaml").read_text())["objective"]
    assert (sft["mtf_prob"], sft["mtf_start_step"], sft["t2t_stream_prob"]) == (0.5, 2, 0.25)
    cpt = yaml.safe_load((out / "t2t_stream_mtf_late" / "cpt" / "train_config.yaml").read_text())["objective"]
    assert cpt["mtf_prob"] == 0.0  # the SFT-only overrides stay out of CPT
    m2t = yaml.safe_load((out / "m2t" / "sft" / "train_config.yaml").read_text())["objective"]
    assert m2t["t2t_rate_max"] == 0.0 and m2t["visible_normalizer"] == "per_stream"
    record = json.loads((out / "m2t.json").read_text())
    assert set(record["eval"]) == set(train_table.SETTINGS)
    for cell in record["eval"].values():
        assert 0 <= cell["score"] <= 100 and cell["tpf"] > 0 and set(cell["families"]) == {"sum", "permutation"}
        assert cell["score"] == pytest.approx(sum(f["score"] for f in cell["families"].values()) / 2)
    capsys.readouterr()
    assert train_table.main(["report", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| m2t | M2T only, best threshold |" in text and "| t2t_stream_mtf_late | S mode |" in text
    assert text.count("| t2t_stream_mtf_late |") == 3  # Q and S rows, and one in the table of all settings



# ------------------------------------------------------------------------------------------ lev_probe
@pytest.fixture(scope="module")
def checkpoint_with_controls(random_checkpoint, tmp_path_factory) -> Path:
    """The random checkpoint with the DELETE/INSERT rows, their head rows nudged so that DELETE wins
    the arg-max somewhere (a zero row never does)."""
    import torch

    from model.tokenizer import load_tokenizer
    from model import DiffusionLM
    from model.levenshtein import add_edit_controls

    lm = DiffusionLM.from_pretrained(random_checkpoint)
    delete_id, _ = add_edit_controls(lm)
    with torch.no_grad():
        lm.lm_head.weight[delete_id] = lm.lm_head.weight[:delete_id].mean(0) * 50.0
    path = tmp_path_factory.mktemp("controls")
    lm.save_pretrained(path)
    load_tokenizer(random_checkpoint).save(path)
    return path


def test_lev_probe_groups_positions_by_alignment_and_edit_label():
    from benchmarks.lev_probe import position_groups

    eos, controls = 1, (100, 101)
    dup = position_groups([3, 3, 5, 1, eos], [3, 5, 1, eos], controls)  # a duplicate: one token to delete
    assert sum(dup["wrong"]) == 1 and sum(dup["label_delete"]) == 1 and sum(dup["label_insert"]) == 0
    assert dup["right"][2:] == [True, True, True]  # the tokens after the duplicate are right once aligned
    gap = position_groups([3, 1, eos], [3, 5, 1, eos], controls)  # a skipped token: an insertion site
    assert gap["wrong"] == [False, False, False] and gap["label_insert"] == [False, True, False]


def test_lev_probe_reports_every_group_of_the_answer_positions(checkpoint_with_controls, tmp_path, capsys):
    from benchmarks import lev_probe

    out = tmp_path / "probe.json"
    assert lev_probe.main(["--model", str(checkpoint_with_controls), "--family", "sort", "--n", "3",
                           "--gen-length", "8", "--block-length", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    groups = result["groups"]
    assert set(groups) == set(lev_probe.GROUPS) and result["examples"] == 3
    assert groups["right"]["positions"] + groups["wrong"]["positions"] > 0
    for cell in groups.values():
        for control in lev_probe.CONTROLS:
            assert 0 <= cell[f"{control}_argmax"] <= cell["positions"]
            if cell["positions"]:
                assert 0.0 <= cell[f"{control}_p99"] <= cell[f"{control}_max"] <= 1.0
    total = groups["right"]["delete_argmax"] + groups["wrong"]["delete_argmax"]
    assert total > 0  # the nudged DELETE row wins somewhere, and the probe counts it
    assert "| wrong |" in capsys.readouterr().out


def test_edit_table_judges_the_deletions_and_insertions_of_levenshtein_decoding(checkpoint_with_controls, tmp_path,
                                                                               capsys):
    from benchmarks import edit_table

    out = tmp_path / "cells.json"
    assert edit_table.main(["--model", f"A={checkpoint_with_controls}", "--families", "sort", "--n", "3",
                            "--gen-length", "8", "--block-length", "4", "--presets", "speedy", "--threads", "1",
                            "--set", "delete_threshold=0.0", "--set", "insert_threshold=0.0", "--json", str(out)]) == 0
    cell = json.loads(out.read_text())["A|sort|S edit"][0]
    assert cell["deletions_per_sample"] > 0  # the nudged DELETE row fires
    judged = sum(cell[f"deletion_{v}"] for v in ("fixes", "breaks", "neutral"))
    assert judged == round(cell["deletions_per_sample"] * 3)  # every deletion judged (sort: one valid answer)
    assert "| A | sort | S edit |" in capsys.readouterr().out.split("DELETE fix / break / neutral")[1]


def test_lev_probe_refuses_a_model_without_the_rows(checkpoint):
    from benchmarks import lev_probe

    with pytest.raises(SystemExit, match="no DELETE/INSERT rows"):
        lev_probe.main(["--model", str(checkpoint), "--family", "sort", "--n", "1", "--gen-length", "8",
                        "--block-length", "4"])


# ------------------------------------------------------------------------------------------ overhead
def test_overhead_counter_counts_host_reads_and_splits_them_by_network():
    import torch

    from benchmarks.overhead import ForwardTimer, HostReadCounter

    class Net(torch.nn.Module):
        def forward(self, x):
            return x * int(x.sum())  # one host read inside the network

    net, x = Net(), torch.arange(4)
    net.device = x.device
    with ForwardTimer(net) as timer, HostReadCounter(timer) as counter:
        bool(x.any())
        x.sum().item()
        x[x > 1] = 0
        x[x > 5]
        x[1:3].tolist()
        x.nonzero()
        x + 1  # no read
        net(x)
    assert timer.seconds and len(timer.seconds) == 1
    assert dict(counter.decoder) == {"__bool__": 1, "item": 1, "__setitem__[bool]": 1, "__getitem__[bool]": 1,
                                     "tolist": 1, "nonzero": 1}
    assert dict(counter.network) == {"__int__": 1}
    assert net.forward.__func__ is Net.forward  # the timer put the method back


def test_overhead_profiles_ours_and_the_reference_on_the_same_prompts(checkpoint, tmp_path, capsys):
    from benchmarks import overhead

    out = tmp_path / "overhead.json"
    assert overhead.main(["--model", str(checkpoint), "--task", "sort16", "--prompts", "3", "--batch", "1", "2",
                          "--presets", "speedy", "--repeats", "2", "--set", "gen_length=8", "--set", "block_length=4",
                          "--cprofile", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["speedy reference", "speedy b1", "speedy b2"]
    assert rows[0]["x_reference"] == 1.0 and rows[0]["same_tokens_as_reference"]
    assert rows[0]["network_calls"] == rows[0]["forwards"]  # the reference runs one row per call
    assert rows[2]["network_calls"] < rows[1]["network_calls"]  # batch 2 shares calls between prompts
    for r in rows:
        p = r["profile"]
        assert r["prompts"] == 3 and r["tokens"] > 0 and len(r["tps_all"]) == len(r["wall_s_all"]) == 2
        assert finite(r["tps_mean"]) and r["tps_sd"] >= 0 and r["tpf_mean"] > 0 and isinstance(
            r["same_tokens_as_reference"], bool)
        assert p["network_calls"] == r["network_calls"]  # the timer saw every forward
        assert 0 < p["network_s"] < p["wall_s"] and p["overhead_s"] > 0
        assert p["network_s"] + p["overhead_s"] == pytest.approx(p["wall_s"])
        assert (p["network_ms_per_call"] + p["overhead_ms_per_call"]) * p["network_calls"] == pytest.approx(
            1000 * p["wall_s"])
        assert all(finite(p[k]) for k in ("network_ms_per_call", "overhead_ms_per_call", "host_reads_per_call",
                                          "network_host_reads_per_call"))
        assert p["host_reads_per_call"] > 0 and sum(p["host_reads_by_op"].values()) == pytest.approx(
            p["host_reads_per_call"] * p["network_calls"])
        assert p["cuda_syncs_per_call"] is None  # CPU
        assert 0 < len(p["top_functions"]) <= 4
    # Neither network reads anything: ours finds its cache slots in the forward plan, made by the decoder
    # once per layout (counted as the decoder's), and the decoder reads less per call than the reference.
    assert all(r["profile"]["network_host_reads_per_call"] == 0 for r in rows)
    assert all(r["profile"]["host_reads_per_call"] < rows[0]["profile"]["host_reads_per_call"] for r in rows[1:])
    assert any("decoding.py" in f["function"] for f in rows[1]["profile"]["top_functions"])
    text = capsys.readouterr().out
    assert "| speedy b2 |" in text and "ms/call decoder" in text

# ------------------------------------------------------------------------------------- serve_load
def test_serve_load_serves_what_the_offline_decoder_gives(tmp_path, capsys):
    from benchmarks import serve_load

    out = tmp_path / "serve_load.json"
    code = serve_load.main(["--clients", "1", "3", "--requests", "2", "--repeats", "2", "--gen-length", "8",
                            "--block-length", "4", "--vocab", "300", "--hidden", "32", "--intermediate", "64",
                            "--layers", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--json", str(out)])
    record = json.loads(out.read_text())
    assert code == 0 and record["all_identical"]
    assert [r["clients"] for r in record["rows"]] == [1, 3] and [r["requests"] for r in record["rows"]] == [2, 6]
    for r in record["rows"]:
        assert len(r["served_tps"]) == len(r["offline_tps"]) == 2 and min(r["served_tps"] + r["offline_tps"]) > 0
        assert 1 <= r["mean_batch"] <= r["clients"]
    assert "| clients = batch | served tok/s |" in capsys.readouterr().out
    deadline = time.monotonic() + 60  # the decoding thread ends once its queue is empty
    while [t for t in threading.enumerate() if t.name.startswith("draftedit-")] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name.startswith("draftedit-")]
