"""`draftedit compare` tables and plots, and the pipeline summary they share."""

from __future__ import annotations

from flows import cli
from flows.compare import RunView, plot, table_rows
from flows.report import final_model_rows, plot_stages, rl_line, summary_rows


def test_compare_rows_put_runs_side_by_side_per_mode(tmp_path):
    a = RunView("a" * 32, "run a", {"eval/score": 0.5, "eval/tpf": 2.0, "eval/tps": 30.0,
                                    "bench/speedy/tps": 100.0, "bench/speedy/tpf": 3.0, "bench/speedy/score": 0.4,
                                    "bench/speedy_b8/tps": 300.0, "train/loss_m2t": 1.0})
    b = RunView("b" * 32, "run b", {"eval/score": 0.75, "bench/quality/tps": 50.0})
    header, rows = table_rows([a, b])
    assert header == ["arm", "metric", "run a", "run b"]
    assert ["eval", "score", "0.500", "0.750"] in rows
    assert ["eval", "TPF", "2.00", "-"] in rows
    assert ["speedy", "TPS", "100.0", "-"] in rows
    assert ["quality", "TPS", "-", "50.0"] in rows
    assert ["speedy_b8", "TPS", "300.0", "-"] in rows
    assert not any(r[1] == "loss_m2t" for r in rows)
    out = plot([a, b], tmp_path / "plots" / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_shows_each_decoding_mode_of_the_evaluation():
    a = RunView("a" * 32, "run a", {"eval/score": 0.9, "eval/speedy/score": 0.8, "eval/speedy_noedit/score": 0.7,
                                    "eval/speedy/tpf": 5.0})
    header, rows = table_rows([a])
    assert ["eval/speedy", "score", "0.800"] in rows and ["eval/speedy_noedit", "score", "0.700"] in rows
    assert ["eval/speedy", "TPF", "5.00"] in rows


def _stage(stage, run_id, **metrics):
    return {"stage": stage, "status": "ran", "run_id": run_id, "seconds": 1.0, "metrics": metrics}


def test_pipeline_summary_plot_and_final_table_show_what_each_stage_adds(tmp_path):
    rows = [
        _stage("data_prep", "d" * 32),
        _stage("cpt", "c" * 32, **{"val/acc_masked": 0.336}),
        _stage("sft", "s" * 32, **{"val/acc_masked": 0.9, "eval/score": 0.85, "eval/quality/score": 0.85, "eval/quality/tpf": 4.0,
                                   "eval/speedy/score": 0.8, "eval/speedy/tpf": 6.0, "eval/speedy/edits_per_sample": 0.3}),
        _stage("rl", "r" * 32, **{"eval/score": 0.9, "eval/quality/score": 0.9, "eval/quality/tpf": 4.1,
                                  "eval/speedy/score": 0.88, "eval/speedy/tpf": 6.2, "rl_eval/initial_accuracy": 0.85,
                                  "rl_eval/accuracy": 0.9, "rl/steps": 120}),
        _stage("evaluate", "e" * 32, **{"eval/score": 0.91, "eval/quality/score": 0.91, "eval/quality_noedit/score": 0.9,
                                        "eval/speedy/score": 0.89, "eval/speedy/edit_precision": 0.95,
                                        "eval/speedy_noedit/score": 0.85}),
    ]
    table = summary_rows(rows)
    sft = next(r for r in table if r[0] == "sft")
    assert sft[3] == "0.850" and sft[6:10] == ("0.800", "6.00", "0.30", "0.900")
    cpt = next(r for r in table if r[0] == "cpt")  # not probed: its own held-out masked-token accuracy
    assert cpt[3] == "-" and cpt[9] == "0.336"
    final = final_model_rows(rows)
    assert [r[0] for r in final] == ["quality, editing on", "quality, editing off", "speedy, editing on", "speedy, editing off"]
    assert final[2][1] == "0.890" and final[2][5] == "0.95"
    assert rl_line(rows) == "RL: held-out accuracy 85.0% -> 90.0% (+5.0 points) in 120 steps"
    out = plot_stages(rows, tmp_path / "stages.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_stages([rows[0]], tmp_path / "none.png") is None  # nothing evaluated: no plot


def test_compare_of_a_missing_run_is_a_clear_error(tmp_path, mlflow_uri, capsys):
    code = cli.main(["compare", "deadbeef", "--set", f"tracking.uri={mlflow_uri}",
                     "--set", f"output_dir={tmp_path}"])
    assert code == 2
    assert "run 'deadbeef' does not exist" in capsys.readouterr().err

