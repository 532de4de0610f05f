"""Per-block FP8: the e4m3 error bound, the Hugging Face fine-grained layout, loading, and bad scales."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from components.config import ConfigError, load_config
from components.quantize import QuantizeConfig, quantizable_linears, round_to_fp8, run_quantize
from components.quantize.modules import name_matches
from model import CheckpointError, DiffusionLM, ModelConfig
from model.fp8 import FP8_DTYPE, FP8_MAX, FP8FormatError, dequantize_blockwise, quantize_blockwise, scale_shape


pytestmark = pytest.mark.usefixtures("one_thread")

# e4m3: 3 mantissa bits, so round-to-nearest is off by at most 2^-4 of the value for normal numbers;
# below the smallest normal (2^-6) the spacing is 2^-9, so at most 2^-10 in absolute (scaled) terms.
E4M3_REL = 2.0 ** -4
E4M3_SUBNORMAL_ABS = 2.0 ** -10


def e4m3_bound(w: torch.Tensor, scale_inv: torch.Tensor, block) -> torch.Tensor:
    """Per-element bound of |w - dequant(quant(w))| from the format alone."""
    rows = scale_inv.repeat_interleave(block[0], 0)[: w.shape[0]]
    full = rows.repeat_interleave(block[1], 1)[:, : w.shape[1]]
    return torch.maximum(w.abs() * E4M3_REL, full * E4M3_SUBNORMAL_ABS)


@pytest.mark.parametrize("shape,block", [((200, 300), (128, 128)), ((64, 48), (16, 16)), ((7, 130), (128, 128))])
def test_round_trip_error_within_the_e4m3_bound(shape, block):
    g = torch.Generator().manual_seed(0)
    # Magnitudes spanning many binades, so both normal and subnormal e4m3 values occur.
    w = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 3)
    w[: block[0], : block[1]] = 0.0  # an all-zero tile
    q, scale_inv = quantize_blockwise(w, block)
    assert q.dtype == FP8_DTYPE and q.shape == w.shape
    assert scale_inv.dtype == torch.float32 and tuple(scale_inv.shape) == scale_shape(shape, block)
    deq = dequantize_blockwise(q, scale_inv, block)
    err = (deq - w).abs()
    assert (err <= e4m3_bound(w, scale_inv, block) * (1 + 1e-6)).all()
    assert err.max() > 0  # it really is quantized
    assert torch.equal(deq[: block[0], : block[1]], torch.zeros(min(block[0], shape[0]), min(block[1], shape[1])))
    # Each tile's largest magnitude maps onto the largest e4m3 value, so it survives exactly.
    tiles_max = q.float().abs().amax()
    assert tiles_max == FP8_MAX


def test_the_bound_is_tight():
    """The error reaches the order of the bound, and one mantissa bit less (e5m2) breaks it."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(128, 128, generator=g)
    q, scale_inv = quantize_blockwise(w)
    bound = e4m3_bound(w, scale_inv, (128, 128))
    err = (dequantize_blockwise(q, scale_inv) - w).abs()
    assert (err <= bound * (1 + 1e-6)).all()
    assert (err / bound).max() > 0.5
    coarser = (w / scale_inv).to(torch.float8_e5m2).float() * scale_inv
    assert ((coarser - w).abs() > bound * (1 + 1e-6)).any()


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    """A tiny MoE model whose widths are not multiples of 128 (partial edge tiles)."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny_moe(hidden_size=160, intermediate_size=200, moe_intermediate_size=72, vocab_size=300,
                               num_hidden_layers=2, mask_token_id=299, eos_token_id=1)
    lm = DiffusionLM(cfg)
    path = tmp_path_factory.mktemp("moe")
    lm.save_pretrained(path)
    (path / "tokenizer.json").write_text("{}")  # copied along, not parsed
    return path


@pytest.fixture(scope="module")
def fp8_dir(moe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8") / "model"
    summary = run_quantize(QuantizeConfig(method="fp8"), moe_dir, out)
    assert summary["quantized_modules"] > 0 and summary["bytes_out"] < summary["bytes_in"]
    return out


def test_layout_is_the_hugging_face_fine_grained_fp8_layout(moe_dir, fp8_dir):
    config = json.loads((fp8_dir / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
        "modules_to_not_convert": ["lm_head"]}
    tensors = load_file(str(fp8_dir / "model.safetensors"))
    original = load_file(str(moe_dir / "model.safetensors"))
    lm = DiffusionLM.from_pretrained(moe_dir)
    linears = {n for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = {k[: -len(".weight_scale_inv")] for k in tensors if k.endswith(".weight_scale_inv")}
    assert quantized == linears - {"lm_head"}
    for name in quantized:
        w, s = tensors[f"{name}.weight"], tensors[f"{name}.weight_scale_inv"]
        assert w.dtype == FP8_DTYPE and s.dtype == torch.float32
        assert list(s.shape) == [math.ceil(w.shape[0] / 128), math.ceil(w.shape[1] / 128)]
    # Embeddings, norms, router weights/bias and the output head stay as they were.
    untouched = [k for k in original if k.removesuffix(".weight") not in quantized]
    assert any("mlp.gate.weight" in k for k in untouched) and any("expert_bias" in k for k in untouched)
    for key in untouched:
        assert torch.equal(tensors[key], original[key]), key
    assert (fp8_dir / "tokenizer.json").is_file()


def test_from_pretrained_dequantizes_within_the_bound(moe_dir, fp8_dir):
    original = DiffusionLM.from_pretrained(moe_dir)
    loaded = DiffusionLM.from_pretrained(fp8_dir)
    assert "quantization_config" not in loaded.config.extra  # the network now holds plain weights
    tensors = load_file(str(fp8_dir / "model.safetensors"))
    params = dict(loaded.named_parameters())
    for name, w in original.named_parameters():
        scale = tensors.get(f"{name}_scale_inv")
        if scale is None:
            assert torch.equal(params[name], w), name
            continue
        assert params[name].dtype == torch.float32
        err = (params[name] - w).abs()
        assert (err <= e4m3_bound(w.detach(), scale, (128, 128)) * (1 + 1e-6)).all(), name
    # The in-memory FP8 rounding used by the benchmark computes exactly what loading gives.
    rounded = DiffusionLM.from_pretrained(moe_dir)
    round_to_fp8(rounded, (128, 128), ["lm_head"])
    ids = torch.randint(0, 299, (2, 24))
    with torch.no_grad():
        assert torch.equal(rounded(ids).logits, loaded(ids).logits)


def test_fp8_folder_loads_in_bf16_and_saves_back_plain(fp8_dir, tmp_path):
    lm = DiffusionLM.from_pretrained(fp8_dir, dtype=torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    lm32 = DiffusionLM.from_pretrained(fp8_dir)
    lm32.save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    again = DiffusionLM.from_pretrained(tmp_path / "plain")
    for (k, a), (_, b) in zip(lm32.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def _corrupt(fp8_dir, tmp_path, edit):
    bad = tmp_path / "bad"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text((fp8_dir / "config.json").read_text())
    tensors = load_file(str(fp8_dir / "model.safetensors"))
    edit(tensors, bad)
    save_file(tensors, str(bad / "model.safetensors"))
    return bad


KEY = "model.layers.0.attention.query_key_value.weight"


def test_scale_shape_mismatch_is_named(fp8_dir, tmp_path):
    bad = _corrupt(fp8_dir, tmp_path, lambda t, _: t.__setitem__(KEY + "_scale_inv", torch.ones(3, 3)))
    with pytest.raises(CheckpointError, match=r"query_key_value\.weight_scale_inv has shape \[3, 3\].*needs \[2, 2\]"):
        DiffusionLM.from_pretrained(bad)


def test_missing_or_orphan_scales_are_named(fp8_dir, tmp_path):
    bad = _corrupt(fp8_dir, tmp_path, lambda t, _: t.pop(KEY + "_scale_inv"))
    with pytest.raises(CheckpointError, match=r"query_key_value\.weight is float8_e4m3fn but .*_scale_inv is missing"):
        DiffusionLM.from_pretrained(bad)
    bad2 = _corrupt(fp8_dir, tmp_path / "x", lambda t, _: t.__setitem__("lm_head.weight_scale_inv", torch.ones(3, 2)))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight has a scale"):
        DiffusionLM.from_pretrained(bad2)


@pytest.mark.parametrize("qcfg,needle", [
    ({"quant_method": "fp8", "fmt": "e4m3"}, "weight_block_size"),
    ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}, "fmt"),
    ({"quant_method": "gptq"}, "quant_method='gptq' is not supported"),
])
def test_bad_quantization_config_is_named(fp8_dir, tmp_path, qcfg, needle):
    def edit(_, folder):
        config = json.loads((folder / "config.json").read_text())
        config["quantization_config"] = qcfg
        (folder / "config.json").write_text(json.dumps(config))
    bad = _corrupt(fp8_dir, tmp_path, edit)
    with pytest.raises(CheckpointError, match=needle):
        DiffusionLM.from_pretrained(bad)


def test_dequantize_rejects_mismatched_scale_directly():
    q, s = quantize_blockwise(torch.randn(130, 10))
    with pytest.raises(FP8FormatError, match="needs"):
        dequantize_blockwise(q, s[:1], name="w")


def test_quantize_stage_input_errors(tmp_path, moe_dir, fp8_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        run_quantize(QuantizeConfig(), tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        run_quantize(QuantizeConfig(), tmp_path / "missing", tmp_path / "out")
    with pytest.raises(CheckpointError, match="already quantized"):
        run_quantize(QuantizeConfig(), fp8_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="out_dir must differ"):
        run_quantize(QuantizeConfig(), moe_dir, moe_dir)
    assert not (tmp_path / "out").exists()


def test_quantize_config_errors_name_the_key():
    with pytest.raises((ConfigError, ValueError), match="method"):
        load_config(QuantizeConfig, overrides=["method=int4"])
    with pytest.raises((ConfigError, ValueError), match="block_size"):
        load_config(QuantizeConfig, overrides=["block_size=[128]"])
    with pytest.raises(ConfigError, match="nonsense"):
        load_config(QuantizeConfig, overrides=["nonsense=1"])


def test_skip_patterns_match_whole_components():
    assert name_matches("model.layers.0.mlp.gate_proj", "mlp")
    assert not name_matches("model.layers.0.mlp.gate_proj", "gate")
    assert name_matches("model.layers.3.attention.dense", "attention.dense")
    tied = DiffusionLM(ModelConfig.tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vocab_size=64,
                                        tie_word_embeddings=True))
    names = quantizable_linears(tied, [])
    assert "lm_head" not in names and "model.layers.0.mlp.up_proj" in names
