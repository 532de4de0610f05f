"""`draftedit gpu-check` on a CPU: every check of the GPU run, at the smallest stand-in shape that keeps
the release's structure (a dense first layer, then MoE layers), with few tokens and steps."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from components.bench import gpu_check
from components.bench.config import GpuCheckConfig
from components.config import CONF_DIR, ConfigError, load_config
from flows.cli import main

pytest.importorskip("peft")

TINY = {"layers": 3, "dense_layers": 1, "experts": 4, "groups": 2, "topk_groups": 1, "experts_per_token": 2,
        "shared_experts": 1, "hidden": 128, "intermediate": 256, "moe_intermediate": 64, "heads": 4, "kv_heads": 2,
        "head_dim": 32, "vocab": 4096, "max_positions": 512}


@pytest.fixture(scope="module")
def tiny_shape(tmp_path_factory):
    path = tmp_path_factory.mktemp("shape") / "tiny.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))
    return path


def _args(out, shape, *sets):
    return ["gpu-check", "--device", "cpu", "--shape", str(shape), "--out", str(out),
            *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def cpu_run(tiny_shape, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(_args(out, tiny_shape))
    return code, json.loads(out.read_text()), printed.getvalue(), out


def _rows(report):
    return {r["name"]: r for r in report["rows"]}


def test_cpu_run_passes_every_check_with_sane_figures(cpu_run):
    code, report, _, out = cpu_run
    cfg = load_config(GpuCheckConfig, CONF_DIR / "bench" / "gpu_check_cpu.yaml")
    rows = _rows(report)
    assert [r["name"] for r in report["rows"]] == [c.name for c in gpu_check.checks(cfg)]
    assert {f"decode_b{b}" for b in (1, 8, 32)} <= set(rows)
    assert code == 0 and report["passed"], [(r["name"], r["error"]) for r in report["rows"] if r["error"]]
    assert all(r["status"] == "PASS" and r["device"] == "cpu" and r["error"] is None for r in report["rows"])
    assert rows["checkpoint"]["figures"]["how"] == "written"
    assert (out.parent / "checkpoint-tiny" / "config.json").is_file()
    assert rows["decode_b1"]["shape"] == "3L h128 4x2e v4096"
    d = cfg.decode
    for b in (1, 8, 32):
        f = rows[f"decode_b{b}"]["figures"]
        # exactly tokens_per_forward tokens per forward, whatever the random weights predict
        assert f["tokens"] == b * d.gen_length and f["forwards"] == d.gen_length // d.tokens_per_forward
        assert 0 < f["tps_min"] <= f["tps"] <= f["tps_max"] and f["peak_mem_mb"] > 0
    assert rows["decode_sampled"]["figures"]["same_seed_identical"] is True
    assert rows["decode_sampled"]["figures"]["other_seed_differs"] is True
    assert rows["decode_sampled"]["figures"]["decode_reproducible"] is True  # CPU sums in a fixed order
    graphs = rows["decode_graphs"]["figures"]  # on a CPU: static shapes (the MoE layout), tokens as eager
    assert graphs["switch"] == "static_shapes" and graphs["same_tokens"] is True
    assert graphs["tps_eager"] > 0 and graphs["tps_graphs"] > 0
    attention = rows["attention_kernels"]["figures"]
    assert attention["rel_error"]["math"] < cfg.attention.max_rel_error and "default" in attention["rel_error"]
    fp8 = rows["fp8_matmul"]["figures"]
    assert fp8["kernel"] in ("blockwise", "rowwise_chunks")
    assert 0.005 < fp8["rel_error_vs_bf16"] < cfg.fp8.max_rel_error  # FP8 rounds, but not by much
    assert fp8["rel_error_vs_exact"] < cfg.fp8.max_kernel_error
    assert fp8["fp8_ms"] > 0 and fp8["bf16_ms"] > 0 and (fp8["m"], fp8["k"], fp8["n"]) == (256, 128, 256)
    lora, full = rows["sft_lora"]["figures"], rows["sft_full"]["figures"]
    for f in (lora, full):
        assert f["tokens_per_s"] > 0 and f["peak_mem_mb"] > 0 and f["steps"] == cfg.train.steps
        assert f["tokens_per_step"] == cfg.train.batch_size * cfg.train.seq_len
    assert 0 < lora["trainable_parameters"] < lora["parameters"]
    assert full["trainable_parameters"] == full["parameters"]
    assert lora["precision"] == "bf16-mixed" and lora["gradient_checkpointing"] is True  # sft_lora_checkpoint.yaml


def test_the_table_prints_one_line_per_check(cpu_run):
    _, report, printed, out = cpu_run
    for row in report["rows"]:
        assert f"| {row['name']} | PASS | cpu |" in printed
    assert f"report: {out}" in printed
    assert f"all {len(report['rows'])} checks passed" in printed


def test_a_failing_check_is_a_row_and_the_others_still_run(cpu_run, tiny_shape, monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(gpu_check, "check_decode_sampled", broken)
    out = cpu_run[3].parent / "broken.json"  # beside the first report: its stand-in is reused
    assert main(_args(out, tiny_shape, "decode.batch_sizes=[1]")) == 1
    rows = _rows(json.loads(out.read_text()))
    assert rows["decode_sampled"]["status"] == "FAIL" and rows["decode_sampled"]["error"] == "kernel exploded second line"
    assert rows["checkpoint"]["figures"]["how"] == "reused"
    later = ("attention_kernels", "fp8_matmul", "sft_lora", "sft_full")
    assert all(rows[n]["status"] == "PASS" for n in ("checkpoint", "load", "decode_b1", *later))
    printed = capsys.readouterr().out
    assert "| decode_sampled | FAIL | cpu |" in printed and "decode_sampled: kernel exploded second line" in printed
    assert "FAILED: decode_sampled" in printed


def test_a_spent_budget_fails_the_checks_not_run(cpu_run, tiny_shape, tmp_path, capsys):
    folder = cpu_run[3].parent / "checkpoint-tiny"
    out = tmp_path / "late.json"
    assert main(_args(out, tiny_shape, "budget_s=1e-9") + ["--checkpoint", str(folder)]) == 1
    report = json.loads(out.read_text())
    assert not report["passed"] and report["rows"]
    assert all(r["status"] == "FAIL" and "time budget" in r["error"] for r in report["rows"])


def test_cuda_without_a_device_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "cuda.json"
    assert main(["gpu-check", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "--device cpu" in err
    assert not out.exists()


@pytest.mark.parametrize("override, needle", [
    ("decode.tokens_per_forward=5", "decode.tokens_per_forward: must divide block_length"),
    ("decode.gen_length=20", "decode.gen_length: must be whole blocks"),
    ("decode.preset=turbo", "unknown decoding preset 'turbo'"),
    ("train.prompt_length=999", "train.prompt_length: must be in"),
])
def test_bad_settings_are_one_line_naming_the_key(override, needle, tmp_path, capsys):
    assert main(["gpu-check", "--device", "cpu", "--out", str(tmp_path / "x.json"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match=needle.split(":")[0]):
        load_config(GpuCheckConfig, CONF_DIR / "bench" / "gpu_check.yaml", [override])


def test_fp8_kernel_matches_the_exact_product_and_refuses_partial_tiles():
    from components.quantize.fp8 import fp8_matmul, fp8_matmul_reference, quantize_activations
    from model.fp8 import quantize_blockwise

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 256, generator=g).bfloat16(), torch.randn(384, 256, generator=g).bfloat16()
    (xq, xs), (wq, ws) = quantize_activations(x), quantize_blockwise(w)
    exact = fp8_matmul_reference(xq, xs, wq, ws, (128, 128))
    out = fp8_matmul(xq, xs, wq, ws, (128, 128), "rowwise_chunks")
    assert out.shape == (64, 384) and out.dtype == torch.bfloat16
    assert float((out.float() - exact).norm() / exact.norm()) < 0.01
    assert float((exact - (x @ w.t()).float()).norm() / exact.norm()) < 0.08
    with pytest.raises(ValueError, match="multiples of 128"):
        fp8_matmul(xq[:, :200], xs[:, :2], wq[:, :200], ws, (128, 128), "rowwise_chunks")
