"""Training on the scaled LLaDA2 MoE stand-in: LoRA SFT through the real entry, data prepared with its tokenizer.

The smallest shape that keeps the release's structure: a dense first layer, then 2 MoE layers of 4 routed
experts and a shared expert."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from components.data import load_data_config, prepare_data
from components.training import TrainingInputError, load_train_config, run_training
from flows.cli import main
from model import DiffusionLM
from train_support import read_weights

pytest.importorskip("peft")

SHAPE = ["--shape", "cpu", "--layers", "3", "--dense-layers", "1", "--experts", "4", "--groups", "2",
         "--topk-groups", "1", "--experts-per-token", "2", "--shared-experts", "1"]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standin") / "cpu"
    assert main(["checkpoint", "init", "--like", "llada2.1-mini", *SHAPE, "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def prepared(standin, tmp_path_factory):
    """SFT conversations tokenized by the stand-in's own tokenizer."""
    cache = tmp_path_factory.mktemp("standin-data")
    overrides = [f"cache_dir={cache}", f"tokenizer.path={standin}", "block_length=8", "max_seq_len=64",
                 "cpt.enabled=false", "sft.synthetic.num_examples=40", "sft.synthetic.families=[permutation,sum]",
                 "sft.synthetic.params={}", "sft.external=[]"]
    return prepare_data(load_data_config(overrides=overrides))


def _overrides(prepared, standin, *extra):
    return ["stage=sft", f"data.prepared={prepared.root}", f"model.init_from={standin}", "trainer.max_steps=3",
            "trainer.batch_size=2", "trainer.block_length=8", "trainer.log_every_steps=1",
            "trainer.checkpoint_every_steps=3", "trainer.val_every_steps=1000", "trainer.num_threads=1",
            "optim.warmup_steps=1", "optim.lr=0.05", "data.val_fraction=0.0", "averaging.top_k=1",
            "lora.enabled=true", "lora.r=4", "lora.alpha=8", *extra]


def _standin_weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def test_standin_has_the_release_structure(standin):
    config = json.loads((standin / "config.json").read_text())
    assert config["first_k_dense_replace"] == 1 and config["num_hidden_layers"] - 1 >= 2
    assert config["num_experts"] >= 4 and config["num_shared_experts"] == 1


def test_lora_sft_on_the_standin_changes_only_the_adapted_weights(standin, prepared, tmp_path):
    targets = ["query_key_value", "dense"]
    # the router's expert_bias is a buffer the load balancing moves, adapters or not: held still here
    overrides = _overrides(prepared, standin, f"lora.target_modules={targets}", "moe.bias_update_rate=0.0")
    result = run_training(load_train_config(None, overrides), tmp_path)
    assert result["steps"] == 3
    assert 0 < result["trainable_parameters"] < result["num_parameters"] / 10
    base, merged = _standin_weights(standin), read_weights(result["checkpoint_dir"])
    assert merged.keys() == base.keys()  # the released key names, no adapter tensors
    changed = {k for k in base if not torch.equal(base[k].float(), merged[k].float())}
    adapted = {k for k in base if k.endswith(tuple(f".{t}.weight" for t in targets))}
    assert changed and changed <= adapted  # the merged adapters and nothing else
    lm = DiffusionLM.from_pretrained(result["checkpoint_dir"])  # reloads through our loader
    assert lm.config.num_experts == 4 and lm.config.first_k_dense_replace == 1


def test_lora_naming_a_module_the_model_lacks_stops_before_training(standin, prepared, tmp_path):
    cfg = load_train_config(None, _overrides(prepared, standin, "lora.target_modules=[q_proj,v_proj]"))
    with pytest.raises(TrainingInputError, match=r"^train\.lora\.target_modules: .*q_proj"):
        run_training(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
