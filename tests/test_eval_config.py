"""The evaluation suite's decoding modes and editing ablation: the keys the config accepts, and the
metrics the evaluate stage reports for each mode with editing on and off."""

from __future__ import annotations

import pytest
import torch


def test_evaluate_stage_reports_each_preset_with_editing_on_and_off(tmp_path):
    from components.evaluate.config import EvalConfig
    from flows import adapters
    from tests.pipeline_support import make_checkpoint

    torch.set_num_threads(1)
    ckpt = make_checkpoint(tmp_path / "ckpt")
    cfg = EvalConfig(tasks=["sort", "sum"], limit=3, presets=["quality", "speedy"], editing_ablation=True,
                     task_overrides=["decode.overrides.gen_length=8", "decode.overrides.editing_threshold=0.0"])
    metrics = adapters.evaluate(cfg, tmp_path / "eval", {"checkpoint": ckpt})["metrics"]
    for prefix in ("eval", "eval/quality", "eval/speedy", "eval/quality_noedit", "eval/speedy_noedit"):
        assert {f"{prefix}/score", f"{prefix}/tpf", f"{prefix}/tps", f"{prefix}/edits_per_sample"} <= set(metrics)
    # tau_edit 0 edits whenever the arg-max differs; the ablation turns every edit off
    assert metrics["eval/speedy/edits_per_sample"] > 0
    assert metrics["eval/speedy_noedit/edits_per_sample"] == metrics["eval/quality_noedit/edits_per_sample"] == 0
    assert metrics["eval/sort/edit_fixes"] + metrics["eval/sort/edit_breaks"] + metrics["eval/sort/edit_neutral"] > 0
    records = (tmp_path / "eval" / "speedy" / "sort" / "records.jsonl").read_text()
    assert '"edit_breaks"' in records and '"edit_oscillations"' in records


def test_eval_config_rejects_unknown_presets_and_an_ablation_without_presets(tmp_path):
    from components.evaluate import TaskConfigError
    from components.evaluate.config import load_eval_config

    with pytest.raises(TaskConfigError, match="presets"):
        load_eval_config(None, ["presets=[fast]"])
    with pytest.raises(TaskConfigError, match="editing_ablation"):
        load_eval_config(None, ["presets=[]", "editing_ablation=true"])
