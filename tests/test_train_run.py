"""End-to-end training runs on a tiny model: export, exact resume after a crash, DDP, MoE balancing, top-k merge."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from components.training import load_train_config, run_training
from components.training.averaging import average_checkpoints
from model import DecodeConfig, DiffusionLM, generate
from model.tokenizer import load_tokenizer
from train_support import REPO, cli_command, prepare_tiny_data, read_weights, run_cli, train_overrides


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("train-data"))


def test_sft_run_exports_a_loadable_model_and_logs_the_metrics(prepared, tmp_path):
    cfg = load_train_config(None, train_overrides(prepared.root, "sft", steps=6, objective__mtf_prob=0.5,
                                                  objective__cap_weight=0.1))
    result = run_training(cfg, tmp_path)
    for key in ("train/loss_m2t", "train/loss_t2t", "train/acc_masked", "train/lr", "train/tokens_per_s"):
        assert key in result and result[key] == result[key], key  # present and not NaN
    assert result["steps"] == 6 and result["resumed_from_step"] == 0
    lm = DiffusionLM.from_pretrained(result["checkpoint_dir"])
    tok = load_tokenizer(result["checkpoint_dir"])
    assert lm.config.mask_token_id == tok.mask_id == prepared.tokenizer.mask_id
    res = generate(lm.eval(), [tok.encode("hello")], DecodeConfig(block_length=8, gen_length=8))
    assert len(res.sequences[0]) >= 1
    history = (tmp_path / "logs" / "run" / "metrics.csv").read_text()
    assert "train/loss_t2t" in history.splitlines()[0]


CRASH_AT_STEP_5 = textwrap.dedent("""
    import os, sys
    import lightning as L
    from components.training import cli, run as run_mod

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                os._exit(9)  # die like a killed process: no cleanup, no final checkpoint

    original = run_mod.run_training
    run_mod.run_training = lambda cfg, out, **kw: original(cfg, out, callbacks=[Crash()])
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_resume_after_a_crash_continues_at_the_right_step(prepared, tmp_path):
    overrides = train_overrides(prepared.root, "sft", steps=8, objective__mtf_prob=0.5)
    reference = run_training(load_train_config(REPO / "conf/train/sft.yaml", overrides), tmp_path / "reference")

    out = tmp_path / "crashed"
    cmd = cli_command("conf/train/sft.yaml", out, overrides)
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    crashed = subprocess.run([cmd[0], "-c", CRASH_AT_STEP_5, *cmd[3:]], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    assert not (out / "model").exists()

    rerun = run_cli("conf/train/sft.yaml", out, overrides)  # the same command again
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from_step"] == 4 and result["steps"] == 8
    got, want = read_weights(result["checkpoint_dir"]), read_weights(reference["checkpoint_dir"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
    # metrics.csv keeps the rows logged before the crash and holds each step once, as the uninterrupted run's.
    resumed_rows, reference_rows = _csv_rows(out), _csv_rows(tmp_path / "reference")
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in reference_rows]
    for got_row, want_row in zip(resumed_rows, reference_rows):
        assert got_row["train/loss"] == pytest.approx(want_row["train/loss"], rel=1e-5), got_row["step"]


def _csv_rows(out) -> list[dict]:
    """Training rows of metrics.csv: step and loss, as numbers."""
    import csv

    with open(out / "logs" / "run" / "metrics.csv", newline="") as fh:
        return [{"step": int(r["step"]), "train/loss": float(r["train/loss"])}
                for r in csv.DictReader(fh) if r.get("train/loss")]


def test_ddp_two_cpu_processes_stay_in_sync(prepared, tmp_path):
    overrides = train_overrides(prepared.root, "cpt", steps=4, trainer__strategy="ddp", trainer__devices=2,
                                trainer__accelerator="cpu", objective__mtf_prob=0.5)
    done = run_cli("conf/train/cpt.yaml", tmp_path, overrides, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert len(result["replica_checksums"]) == 2 and result["replicas_in_sync"]
    assert result["steps"] == 4
    DiffusionLM.from_pretrained(result["checkpoint_dir"])


def test_moe_training_balances_and_logs_expert_load(prepared, tmp_path):
    overrides = train_overrides(prepared.root, "cpt", steps=4, model__preset="tiny_moe",
                                moe__bias_update_rate=0.01) + ["model.overrides.moe_intermediate_size=16"]
    result = run_training(load_train_config(None, overrides), tmp_path)
    assert any(k.startswith("moe/") and k.endswith("load_max_over_mean") for k in result)
    weights = read_weights(result["checkpoint_dir"])
    biases = [v for k, v in weights.items() if k.endswith("gate.expert_bias")]
    assert biases and all(b.abs().max() > 0 for b in biases)  # moved from zero by the balancing
    for b in biases:  # each step moves every expert's bias by exactly +-rate (or 0)
        steps = (b / 0.01).round()
        torch.testing.assert_close(b, steps * 0.01)


def test_topk_checkpoint_average_is_exported(prepared, tmp_path):
    overrides = train_overrides(prepared.root, "sft", steps=6, averaging__top_k=2, data__val_fraction=0.2,
                                trainer__val_every_steps=2)
    result = run_training(load_train_config(None, overrides), tmp_path)
    assert result["averaged_checkpoints"] == 2
    kept = sorted((tmp_path / "topk").glob("*.ckpt"))
    assert len(kept) == 2
    want = average_checkpoints(kept)
    got = read_weights(result["checkpoint_dir"])
    for k in got:
        torch.testing.assert_close(got[k], want[k], msg=k)


def test_block_schedule_and_whole_row_blocks_train(prepared, tmp_path):
    overrides = train_overrides(prepared.root, "cpt", steps=6, objective__complementary="true",
                                objective__weighting="inv_t", objective__noise_per="block")
    overrides += ["trainer.block_schedule=[{until_step: 2, block_length: 1}, {until_step: 4, block_length: 0}]"]
    result = run_training(load_train_config(None, overrides), tmp_path)
    assert result["steps"] == 6 and result["train/block_length"] == 8


def test_lora_trains_only_adapters_and_exports_merged_weights(prepared, tmp_path):
    pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    first = run_training(load_train_config(None, train_overrides(prepared.root, "cpt", steps=2)), base_dir)
    overrides = [o for o in train_overrides(prepared.root, "sft", steps=4) if not o.startswith("model.overrides")]
    overrides += [f"model.init_from={first['checkpoint_dir']}", "lora.enabled=true", "lora.r=4", "lora.alpha=8",
                  "optim.lr=0.05"]
    result = run_training(load_train_config(None, overrides), tmp_path / "lora")
    assert result["trainable_parameters"] < result["num_parameters"] / 2
    before, after = read_weights(first["checkpoint_dir"]), read_weights(result["checkpoint_dir"])
    assert before.keys() == after.keys()  # plain checkpoint names, no adapter tensors
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("query_key_value" in k for k in changed)  # adapters merged into their target weights
    assert not any("word_embeddings" in k or "norm" in k for k in changed)  # everything else frozen


def test_merged_lora_weights_give_the_adapted_models_logits():
    """The export folds W + (alpha / r) B A from the state dict alone; the plain model it loads into
    computes what the adapted model computes."""
    pytest.importorskip("peft")
    from components.training.run import apply_lora, merge_lora_weights
    from model import ModelConfig

    torch.manual_seed(0)
    cfg = load_train_config(None, ["lora.enabled=true", "lora.r=4", "lora.alpha=12", "lora.dropout=0.0",
                                   "lora.target_modules=[query_key_value,dense,gate_proj]"])
    adapted = apply_lora(DiffusionLM(ModelConfig.tiny(vocab_size=64)), cfg).eval()
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # peft starts B at zero: a trained adapter is not
    tokens = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        want = adapted(tokens).logits
    merged = merge_lora_weights(adapted.state_dict(), alpha=12, r=4)
    plain = DiffusionLM(ModelConfig.tiny(vocab_size=64)).eval()
    assert merged.keys() == plain.state_dict().keys()
    plain.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens).logits, want, rtol=1e-4, atol=1e-5)
    base = {k.replace(".base_layer.", "."): v for k, v in adapted.state_dict().items() if ".lora_" not in k}
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith(("query_key_value.weight", "dense.weight", "gate_proj.weight")) for k in changed)


@pytest.mark.parametrize("overrides,dtype", [
    (["trainer.precision=bf16-mixed"], torch.float32),  # full fine-tuning: float32 master weights
    (["trainer.precision=bf16-true"], None),            # the weights as stored: the user asked for bf16 training
    (["trainer.precision=bf16-mixed", "lora.enabled=true"], None),  # LoRA: the frozen base as stored
])
def test_full_fine_tuning_trains_float32_master_weights(overrides, dtype):
    from components.training.run import weights_dtype

    assert weights_dtype(load_train_config(None, overrides)) == dtype


def test_lora_without_peft_stops_before_training(prepared, tmp_path, monkeypatch):
    import sys

    from components.training import TrainingInputError

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    cfg = load_train_config(None, train_overrides(prepared.root, "sft") + ["lora.enabled=true"])
    with pytest.raises(TrainingInputError, match="peft"):
        run_training(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_lightning_leafspec_notice_is_held_back_and_only_it():
    """Lightning's own use of torch's deprecated LeafSpec warns nothing; other FutureWarnings still do."""
    import os
    import subprocess
    import sys

    code = textwrap.dedent("""
        import warnings
        import components.training.run
        from lightning.pytorch.utilities._pytree import _tree_flatten
        _tree_flatten(object())
        try:
            warnings.warn("another notice", FutureWarning)
        except FutureWarning:
            print("others still warn")
    """)
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "others still warn"
