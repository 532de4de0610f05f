"""A folder laid out like the released LLaDA2.1-mini (bf16 shards, its config.json vocabulary, a
tokenizer naming the mask token) loads and generates from text — the path users take offline."""

import json

import torch

from components import generate_cli
from components.data.bpe import train_bpe_tokenizer
from model import DecodeConfig, DiffusionLM, ModelConfig, generate
from model.tokenizer import load_tokenizer

# The released config.json names these fields (values scaled down); no mask or EOS id is in it,
# and transformers >= 4.56 writes "dtype" instead of "torch_dtype".
RELEASED_STYLE_CONFIG = {
    "architectures": ["LLaDA2MoeModelLM"], "dtype": "bfloat16", "first_k_dense_replace": 1, "head_dim": 16,
    "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
    "max_position_embeddings": 512, "model_type": "llada2_moe", "moe_intermediate_size": 32, "n_group": 4,
    "norm_head": False, "norm_topk_prob": True, "num_attention_heads": 4, "num_experts": 8,
    "num_experts_per_tok": 2, "num_hidden_layers": 3, "num_key_value_heads": 2, "num_shared_experts": 1,
    "output_router_logits": False, "pad_token_id": 0, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06,
    "rope_theta": 600000, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
    "tie_word_embeddings": False, "topk_group": 2, "use_qk_norm": True, "use_qkv_bias": False,
    "moe_router_enable_expert_bias": True,
}


def _make_folder(tmp_path):
    texts = ["def add(a, b):\n    return a + b\n", "the quick brown fox jumps over the lazy dog\n"] * 50
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    folder = tmp_path / "LLaDA2.1-mini-like"
    cfg = ModelConfig.from_dict({**RELEASED_STYLE_CONFIG, "vocab_size": tokenizer.vocab_size})
    torch.manual_seed(0)
    lm = DiffusionLM(cfg).to(torch.bfloat16)
    lm.save_pretrained(folder, max_shard_bytes=60_000)
    tokenizer.save(folder)
    return folder, lm


def test_released_style_folder_round_trips_in_bf16(tmp_path):
    folder, original = _make_folder(tmp_path)
    assert len(list(folder.glob("model-0000*-of-*.safetensors"))) > 1
    saved = json.loads((folder / "config.json").read_text())
    assert saved["dtype"] == "bfloat16" and "mask_token_id" in saved and saved["mask_token_id"] is None
    lm = DiffusionLM.from_pretrained(folder)
    assert lm.dtype == torch.bfloat16
    for key, tensor in original.state_dict().items():
        assert torch.equal(lm.state_dict()[key], tensor), key


def test_generate_from_text_with_the_folder_tokenizer(tmp_path, capsys):
    folder, _ = _make_folder(tmp_path)
    tokenizer = load_tokenizer(folder)
    lm = DiffusionLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "def add"}]))
    cfg = DecodeConfig(block_length=8, gen_length=16, threshold=0.5, mask_id=tokenizer.mask_id,
                       eos_id=tokenizer.eos_id)
    res = generate(lm, [prompt], cfg)
    assert 1 <= len(res.sequences[0]) <= 16 and tokenizer.mask_id not in res.sequences[0]
    assert generate_cli.main(["--model", str(folder), "--prompt", "def add", "--chat", "--preset", "speedy",
                              "--gen-length", "16", "--block-length", "8", "--no-live"]) == 0
    assert "forwards" in capsys.readouterr().out
