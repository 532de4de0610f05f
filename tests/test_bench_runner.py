"""run_benchmark end to end on a tiny model: measures, files, MLflow, resume, bad input, CLI, configs."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import components.bench.measure as measure
import components.bench.runner as runner
from components.bench import BenchConfig, BenchmarkError, run_benchmark
from components.bench.prompts import load_prompt_set
from components.config import CONF_DIR, ConfigError, load_config
from components.quantize import QuantizeConfig, load_model
from model import DiffusionLM


pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["prompts.num_prompts=3", "decode_overrides.gen_length=8", "decode_overrides.block_length=8", "repeats=2", "warmup=1",
        "baselines.max_prompts=2", "threads=1"]


@pytest.fixture(scope="module")
def model_dir(random_checkpoint) -> Path:
    return random_checkpoint


def _cfg(*overrides, settings=None):
    over = list(FAST) + list(overrides)
    cfg = load_config(BenchConfig, CONF_DIR / "bench" / "default.yaml", overrides=over)
    if settings is not None:
        cfg = load_config(BenchConfig, CONF_DIR / "bench" / "default.yaml",
                          overrides=over + [f"settings={json.dumps(settings)}"])
    return cfg


TWO = [{"decode": {"preset": "speedy"}, "batch_size": 1},
       {"decode": {"preset": "quality"}, "batch_size": 2, "quant": "fp8"}]


@pytest.fixture(scope="module")
def result(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    settings = TWO + [{"decode": {"preset": "quality"}, "batch_size": 2}]
    return run_benchmark(_cfg(settings=settings), model_dir, out), out


def test_every_measure_is_reported(result):
    res, out = result
    names = [r["name"] for r in res["records"]]
    assert names == ["speedy_b1", "quality_b2_fp8", "quality_b2", "autoregressive", "reference"]
    for r in res["records"]:
        assert r["tokens"] > 0 and r["forwards"] > 0 and r["tps"] > 0 and r["wall_s"] > 0
        assert r["tpf"] == pytest.approx(r["tokens"] / r["forwards"])
        assert 0 < r["latency_p50_s"] <= r["latency_p95_s"]
        assert r["peak_mem_mb"] > 0 and 0 <= r["score"] <= 1
        assert r["deterministic"] and len(r["wall_s_all"]) == 2
    by = {r["name"]: r for r in res["records"]}
    assert by["quality_b2"]["network_calls"] < by["quality_b2"]["forwards"]  # two prompts per network call
    assert by["autoregressive"]["forwards"] >= by["autoregressive"]["tokens"]  # one token per forward at most
    # The reference loop and our decoder agree token for token on the prompts they share.
    assert "quality_b2" in by["reference"]["same_tokens_as"].split(",")
    assert by["reference"]["x_reference"] == pytest.approx(1.0)
    assert by["quality_b2_fp8"]["agreement_with_unquantized"] is not None
    assert by["quality_b2_fp8"]["x_unquantized"] == pytest.approx(by["quality_b2_fp8"]["tps"] / by["quality_b2"]["tps"])
    assert by["quality_b2"]["x_unquantized"] is None  # only quantized settings have an unquantized twin
    machine = json.loads((out / "machine.json").read_text())
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] >= 1 and machine["cpu"]
    for name in ("results.jsonl", "results.csv", "results.md", "table3.md", "score_vs_tps.png", "bench_config.yaml"):
        assert (out / name).is_file(), name
    assert "| quality | 2 | fp8 |" in (out / "table3.md").read_text()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(l)["name"] for l in lines] == names


def test_scores_come_from_the_task_scorer(model_dir):
    cfg = _cfg()
    model = DiffusionLM.from_pretrained(model_dir)
    prompts = load_prompt_set(cfg.prompts, model_dir, model.config.vocab_size, model.config.mask_token_id)
    from components.evaluate import load_samples, load_task
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    samples = load_samples(load_task("sum"))[:3]
    right = [tok.encode(s.reference) + [tok.eos_id] for s in samples]
    wrong = [tok.encode("9 9 9 9 9 9 9 9 9") for _ in samples]
    assert prompts.score(right) == 1.0
    assert prompts.score(wrong) == 0.0
    assert prompts.score([right[0], wrong[1]], [0, 1]) == 0.5
    assert prompts.decode_overrides == {"gen_length": 32}  # the task's own decode overrides


def test_results_go_to_mlflow(model_dir, tmp_path, mlflow_uri):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    exp = client.create_experiment("bench", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    run_benchmark(_cfg("baselines.reference=false", settings=TWO), model_dir, tmp_path / "out", run=run, client=client)
    data = client.get_run(run.info.run_id).data
    for key in ("bench/speedy_b1/tps", "bench/speedy_b1/tpf", "bench/speedy_b1/latency_p95_s",
                "bench/speedy_b1/peak_mem_mb", "bench/speedy_b1/score", "bench/quality_b2_fp8/tps",
                "bench/speedy/tps", "bench/autoregressive/tps", "bench/speedy_b1/x_autoregressive",
                "bench/speedy_b1/edits_per_sample", "bench/quality_b2_fp8/edit_oscillations",
                "bench/speedy/edits_per_sample"):
        assert key in data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "bench")}
    assert {"bench/results.md", "bench/results.csv", "bench/score_vs_tps.png", "bench/machine.json"} <= artifacts


def test_an_interrupted_benchmark_keeps_and_resumes(model_dir, tmp_path, monkeypatch):
    cfg = _cfg("baselines.reference=false", "baselines.autoregressive=false", settings=TWO)
    real = runner.measure
    calls = []

    def interrupted(plan, *args, **kwargs):
        calls.append(plan.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(runner, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, model_dir, tmp_path)
    kept = [json.loads(l)["name"] for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert kept == ["speedy_b1"]
    calls.clear()
    monkeypatch.setattr(runner, "measure", lambda plan, *a, **k: calls.append(plan.name) or real(plan, *a, **k))
    res = run_benchmark(cfg, model_dir, tmp_path)
    assert calls == ["quality_b2_fp8"]  # only what was missing
    assert [r["name"] for r in res["records"]] == ["speedy_b1", "quality_b2_fp8"]
    assert all(r["edits_per_sample"] is not None for r in res["records"])  # the kept line has its edit counts
    calls.clear()
    run_benchmark(_cfg("baselines.reference=false", "baselines.autoregressive=false", "repeats=1", settings=TWO),
                  model_dir, tmp_path)
    assert calls == ["speedy_b1", "quality_b2_fp8"]  # a changed measurement invalidates the old lines


def test_random_prompts_give_speed_without_score(model_dir, tmp_path):
    res = run_benchmark(_cfg("prompts.task=null", "baselines.reference=false", "baselines.autoregressive=false",
                             settings=TWO[:1]), model_dir, tmp_path)
    assert res["records"][0]["score"] is None and res["records"][0]["tps"] > 0
    assert all(res["records"][0][k] is None for k in runner.EDIT_KEYS)  # no answers: no edit accounting
    assert (tmp_path / "score_vs_tps.png").is_file()


def test_edits_are_classified_in_one_untimed_pass(model_dir, tmp_path, monkeypatch):
    # sort has one valid answer per prompt: every edit is judged. tau_edit = 0 makes the untrained model edit.
    cfg = _cfg("prompts.task=sort", "repeats=1", "baselines.reference=false", "baselines.autoregressive=false",
               settings=[{"decode": {"preset": "speedy", "overrides": {"editing_threshold": 0.0}}, "batch_size": 2}])
    recorded = []  # record_trajectory of every decode call: warm-up, timed passes, then the accounting pass
    real = measure._decode_chunk
    monkeypatch.setattr(measure, "_decode_chunk",
                        lambda lm, plan, ids: recorded.append(plan.decode.record_trajectory) or real(lm, plan, ids))
    res = run_benchmark(cfg, model_dir, tmp_path)
    assert recorded == [False] * 3 + [True] * 2  # warm-up + 2 timed chunks untraced; 2 traced chunks after them
    (record,) = res["records"]

    # The same decode, classified directly against the task's answers.
    from model import generate
    from model.tokenizer import load_tokenizer
    from components.edits import EditStats, classify_edits
    from components.evaluate import load_samples, load_task

    lm = load_model(model_dir)
    prompts = load_prompt_set(cfg.prompts, model_dir, lm.config.vocab_size, lm.config.mask_token_id)
    tok = load_tokenizer(model_dir)
    answers = [tok.encode(s.reference) for s in load_samples(load_task("sort"))[:3]]
    assert prompts.references == answers
    (plan,) = runner.make_plans(cfg, prompts)
    decode = dataclasses.replace(plan.decode, record_trajectory=True)
    direct, sequences = EditStats(), []
    for first in (0, 2):
        out = generate(lm, prompts.ids[first:first + 2], decode)
        for i, (seq, traj) in enumerate(zip(out.sequences, out.trajectories), start=first):
            target = [t for t in seq if t != tok.eos_id] if prompts.judges[i](seq) else answers[i]
            direct = direct + classify_edits(traj, target, tok.eos_id, len(seq))
            sequences.append(seq)
    stored = json.loads((tmp_path / "results.jsonl").read_text())
    assert stored["sequences"] == sequences  # the accounting pass decoded what was timed
    assert direct.edits > 0 and direct.edits == record["edits"] and direct.unjudged == 0
    assert direct.fixes + direct.breaks + direct.neutral == direct.edits
    assert {k: record[k] for k in runner.EDIT_KEYS} == direct.named()
    assert record["edits_per_sample"] == pytest.approx(direct.edits / 3)
    md = (tmp_path / "results.md").read_text()
    assert "| edits_per_sample | edit_precision |" in md
    assert f"| {record['edits_per_sample']:.4g} |" in md


def test_quantized_folders_are_benchmarked_as_they_load(model_dir, tmp_path):
    from components.quantize import run_quantize

    run_quantize(QuantizeConfig(method="int8_dynamic", check=False), model_dir, tmp_path / "int8")
    lm = load_model(tmp_path / "int8")
    assert type(lm.model.layers[0].mlp.up_proj.weight) not in (torch.Tensor, torch.nn.Parameter)  # int8 kernels
    res = run_benchmark(_cfg("prompts.task=null", "baselines.reference=false", "baselines.autoregressive=false",
                             settings=TWO[:1]), tmp_path / "int8", tmp_path / "out")
    assert res["records"][0]["tokens"] > 0


# ------------------------------------------------------------------------------------ bad input
def test_not_a_checkpoint_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(BenchmarkError, match="no config.json"):
        run_benchmark(_cfg(), tmp_path / "x", tmp_path / "out")
    (tmp_path / "x" / "config.json").write_text("{}")
    with pytest.raises(BenchmarkError, match="no \\*.safetensors"):
        run_benchmark(_cfg(), tmp_path / "x", tmp_path / "out")
    with pytest.raises(BenchmarkError, match="does not exist"):
        run_benchmark(_cfg(), tmp_path / "nope", tmp_path / "out")


def test_a_setting_that_does_not_fit_fails_before_any_measurement(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "measure", lambda *a, **k: pytest.fail("measured despite the memory check"))
    cfg = _cfg("memory_limit_mb=60", "baselines.reference=false", "baselines.autoregressive=false",
               settings=[{"decode": {"preset": "speedy"}, "batch_size": 1},
                         {"decode": {"preset": "speedy"}, "batch_size": 4096}])
    cfg.prompts.num_prompts = 4096
    cfg.prompts.task = None
    with pytest.raises(BenchmarkError, match=r"setting speedy_b4096 \(batch_size 4096.*MiB.*lower its batch_size"):
        run_benchmark(cfg, model_dir, tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_out_of_memory_while_running_is_named(model_dir, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(measure, "_decode_chunk", oom)
    with pytest.raises(BenchmarkError, match=r"setting speedy_b1 \(batch_size 1\) ran out of memory"):
        run_benchmark(_cfg("prompts.task=null", settings=TWO[:1]), model_dir, tmp_path)


def test_prompts_that_do_not_fit_the_model_are_refused(model_dir, tmp_path):
    with pytest.raises(BenchmarkError, match="setting speedy_b1: .*max_position_embeddings"):
        run_benchmark(_cfg("prompts.task=null", "decode_overrides.gen_length=2000", settings=TWO[:1]), model_dir, tmp_path)


def test_a_released_layout_folder_takes_its_special_ids_from_its_tokenizer(tmp_path):
    """A released config.json names no mask id; the benchmark reads it from tokenizer_config.json."""
    from flows.cli import main

    folder = tmp_path / "standin"
    assert main(["checkpoint", "init", "--like", "llada2.1-mini", "--shape", "cpu", "--layers", "2", "--dense-layers", "1",
                 "--experts", "4", "--groups", "2", "--topk-groups", "1", "--out", str(folder)]) == 0
    assert json.loads((folder / "config.json").read_text()).get("mask_token_id") is None
    res = run_benchmark(_cfg("prompts.task=null", "baselines.reference=false", "baselines.autoregressive=false",
                             "repeats=1", settings=TWO[:1]), folder, tmp_path / "out")
    [row] = res["records"]
    assert row["tokens"] > 0


def test_a_task_needs_a_tokenizer(model_dir, tmp_path):
    bare = tmp_path / "bare"
    DiffusionLM.from_pretrained(model_dir).save_pretrained(bare)
    with pytest.raises(BenchmarkError, match="needs a tokenizer"):
        run_benchmark(_cfg(), bare, tmp_path / "out")


@pytest.mark.parametrize("override,needle", [
    ('settings=[{decode: {preset: speedy}, quant: int4}]', r"settings\[0\]\.quant"),
    ('settings=[{decode: {preset: speedy}, batch_size: 0}]', r"settings\[0\]\.batch_size"),
    ('settings=[{decode: {preset: speedy}}, {decode: {preset: speedy}}]', "unique"),
    ('settings=[{decode: {preset: speedy, overrides: {use_cache: false}}}]', "use_cache"),
    ("repeats=0", "repeats"),
    ("device=tpu", "device"),
    ("bogus=1", "bogus"),
])
def test_bad_config_names_the_key(override, needle):
    with pytest.raises((BenchmarkError, ConfigError), match=needle):
        load_config(BenchConfig, CONF_DIR / "bench" / "default.yaml", overrides=[override])


def test_unknown_decoding_preset_is_named():
    # caught when the config loads, before a model is read: the presets are the files in conf/decode/
    with pytest.raises(ConfigError, match=r"settings\[0\].decode.preset: unknown decoding preset 'turbo'; known: \['quality', 'speedy'\]"):
        _cfg(settings=[{"decode": {"preset": "turbo"}}])


@pytest.mark.parametrize("path", sorted((CONF_DIR / "bench").glob("*.yaml")) + sorted((CONF_DIR / "quantize").glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path):
    from components.bench.config import GpuCheckConfig

    if path.parent.name == "bench":
        schema = GpuCheckConfig if path.stem.startswith("gpu_check") else BenchConfig
    else:
        schema = QuantizeConfig
    load_config(schema, path)


def test_cli_quantize_then_bench(model_dir, tmp_path, capsys):
    from flows.cli import main

    assert main(["quantize", "--model", str(model_dir), "--out", str(tmp_path / "fp8"), "--set", "check=false"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "fp8"
    sets = [*FAST, "prompts.task=null", "baselines.reference=false", "baselines.autoregressive=false",
            "settings=[{decode: {preset: speedy}}]"]
    args = ["bench", "--model", str(tmp_path / "fp8"), "--out", str(tmp_path / "bench")]
    args += [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "speedy_b1" in printed and "tps" in printed
    assert main(["bench", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "b2")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_benchmark_with_fp8_weights(model_dir, tmp_path):
    res = run_benchmark(_cfg("device=cuda", "dtype=bfloat16", "prompts.task=null", settings=TWO), model_dir, tmp_path)
    assert all(r["tps"] > 0 for r in res["records"]) and res["machine"]["gpu"]


def test_cli_bench_tracks_to_mlflow(model_dir, tmp_path, mlflow_uri, capsys):
    import mlflow

    from flows.cli import main

    sets = [*FAST, "prompts.task=null", "baselines.reference=false", "settings=[{decode: {preset: quality}}]"]
    args = ["bench", "--model", str(model_dir), "--out", str(tmp_path / "bench"), "--track",
            "--tracking-uri", mlflow_uri, "--experiment", "bench-test"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    assert "MLflow run" in capsys.readouterr().out
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("bench-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"bench/quality_b1/tps", "bench/quality/tps", "bench/autoregressive/tps"} <= set(run.data.metrics)


def test_interleaved_repeats_run_round_robin_and_measure_the_same(model_dir, tmp_path, monkeypatch):
    order = []
    real = measure.Measurement.one_pass

    def spy(self):
        order.append(self.plan.name)
        return real(self)

    monkeypatch.setattr(measure.Measurement, "one_pass", spy)
    base = ["prompts.task=null", "baselines.reference=false", "baselines.autoregressive=false"]
    inter = run_benchmark(_cfg(*base, "interleave=true", settings=TWO), model_dir, tmp_path / "a")
    assert order == ["speedy_b1", "quality_b2_fp8"] * 2
    seq = run_benchmark(_cfg(*base, settings=TWO), model_dir, tmp_path / "b")
    for a, b in zip(inter["records"], seq["records"]):
        assert (a["name"], a["tokens"], a["forwards"], a["repeats"]) == (b["name"], b["tokens"], b["forwards"], 2)


def test_cli_bench_random_model_reports_fp8_size_and_reuses_the_model(tmp_path, capsys):
    from flows.cli import main

    sizes = ["vocab=64", "hidden=32", "intermediate=64", "layers=2", "heads=2", "kv_heads=1", "head_dim=16"]
    sets = [*FAST, "baselines.reference=false", "baselines.autoregressive=false",
            "settings=[{decode: {preset: speedy}}, {decode: {preset: speedy}, quant: fp8}]"]
    args = ["bench", "--config", "table3", "--random-model", *sizes, "--out", str(tmp_path)]
    args += [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "FP8 checkpoint:" in printed and "speedy_b1_fp8" in printed
    fp8 = json.loads((tmp_path / "fp8_checkpoint.json").read_text())
    assert 0 < fp8["bytes_out"] < fp8["bytes_in"]  # one byte per weight instead of four
    assert json.loads((tmp_path / "random_model" / "config.json").read_text())["hidden_size"] == 32
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["speedy_b1", "speedy_b1_fp8"]
    assert all(r["score"] is None and r["tps"] > 0 for r in records)  # random ids: speed only
    assert (tmp_path / "table3.md").is_file()
    stamp = (tmp_path / "random_model" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "random_model" / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("item, needle", [("hidden", "expected SIZE=VALUE"), ("width=3", "expected SIZE=VALUE"),
                                          ("init=flat", "must be one of")])
def test_cli_bench_random_model_names_a_bad_size(item, needle, tmp_path, capsys):
    from flows.cli import main

    assert main(["bench", "--random-model", item, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--random-model {item}" in err and needle in err
