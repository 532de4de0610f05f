"""The CPU int8 paths: converter, saved folder with its marker, reload, decoding with it."""

import json

import pytest
import torch

from components.quantize import QuantizeConfig, apply_int8, load_model, run_quantize
from components.quantize.int8 import INT8_MARKER
from model import DiffusionLM, ModelConfig, generate
from model.decoding import DecodeConfig


pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMES = ["int8_dynamic", "int8_weight_only", "int8_dynamic_fbgemm"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=200,
                           mask_token_id=199, eos_token_id=1)
    lm = DiffusionLM(cfg)
    with torch.no_grad():  # larger weights than the default init so logits are not flat
        for p in lm.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    path = tmp_path_factory.mktemp("plain")
    lm.save_pretrained(path)
    return path


def _quantized_weight(module) -> torch.Tensor:
    w = module.weight
    return w() if callable(w) else w


@pytest.mark.parametrize("scheme", SCHEMES)
def test_saved_int8_folder_reloads_to_the_same_quantized_model(model_dir, tmp_path, scheme):
    out = tmp_path / scheme
    summary = run_quantize(QuantizeConfig(method=scheme), model_dir, out)
    marker = json.loads((out / "config.json").read_text())["quantization_config"]
    assert marker["quant_method"] == INT8_MARKER and marker["scheme"] == scheme
    assert summary["quantized_modules"] == 2 * 5  # per layer: qkv, dense, gate, up, down (not lm_head)
    original = DiffusionLM.from_pretrained(model_dir)
    converted = DiffusionLM.from_pretrained(model_dir)
    apply_int8(converted, scheme)
    reloaded = load_model(out)
    up = reloaded.model.layers[0].mlp.up_proj
    if scheme == "int8_dynamic_fbgemm":
        assert isinstance(up, torch.ao.nn.quantized.dynamic.Linear)
    else:
        assert type(_quantized_weight(up)) is not torch.Tensor  # a torchao quantized tensor subclass
    assert isinstance(reloaded.lm_head.weight, torch.Tensor) and reloaded.lm_head.weight.dtype == torch.float32
    ids = torch.randint(0, 199, (2, 40))
    with torch.no_grad():
        ref, a, b = original(ids).logits, converted(ids).logits, reloaded(ids).logits
    assert torch.equal(a, b)  # quantization is deterministic: the folder needs no pickled int8 tensors
    rel = (b - ref).norm() / ref.norm()
    assert 0 < rel < 0.1  # int8 changes the numbers a little, never wildly
    assert (b.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8


def test_plain_loader_reads_int8_folder_as_original_weights(model_dir, tmp_path):
    run_quantize(QuantizeConfig(method="int8_dynamic", check=False), model_dir, tmp_path / "q")
    plain = DiffusionLM.from_pretrained(tmp_path / "q")
    original = DiffusionLM.from_pretrained(model_dir)
    for (k, a), (_, b) in zip(original.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("scheme", ["int8_dynamic", "int8_weight_only"])
def test_decoder_on_a_torchao_int8_model_is_batch_invariant(model_dir, scheme):
    """torchao scales activations per token, so a prompt decodes the same alone or in a batch."""
    lm = DiffusionLM.from_pretrained(model_dir)
    apply_int8(lm, scheme)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    cfg = DecodeConfig(gen_length=16, block_length=8, threshold=0.5, editing_threshold=0.7)
    batched = generate(lm, prompts, cfg)
    single = [generate(lm, [p], cfg).sequences[0] for p in prompts]
    assert batched.sequences == single
    assert all(len(s) > 0 for s in batched.sequences)


def test_fbgemm_int8_decodes_but_is_not_batch_invariant(model_dir):
    """FBGEMM's dynamic quantization uses one activation scale per input tensor (the whole batch),
    so batched outputs may differ from batch-1 outputs; batch-1 decoding is still deterministic."""
    lm = DiffusionLM.from_pretrained(model_dir)
    apply_int8(lm, "int8_dynamic_fbgemm")
    cfg = DecodeConfig(gen_length=16, block_length=8, threshold=0.5, editing_threshold=0.7)
    first = generate(lm, [[5, 6, 7]], cfg)
    assert first.sequences == generate(lm, [[5, 6, 7]], cfg).sequences
    assert len(first.sequences[0]) > 0


def test_unknown_scheme_and_bad_dtype_are_refused(model_dir):
    lm = DiffusionLM.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="unknown int8 scheme"):
        apply_int8(lm, "int4")
    with pytest.raises(ValueError, match="float32"):
        apply_int8(DiffusionLM.from_pretrained(model_dir, dtype=torch.bfloat16), "int8_dynamic_fbgemm")


def test_importing_torchao_logs_nothing_but_later_warnings_still_show():
    """torchao's import-time notices (kernels for other machines, no Triton on CPU) say nothing to the
    user; its loggers are back to normal once the import is done."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    code = ("import logging\nlogging.basicConfig()\n"
            "from components.quantize.int8 import import_torchao\nimport_torchao()\n"
            "logging.getLogger('torchao').warning('after the import')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == "WARNING:torchao:after the import", proc.stderr[-2000:]
