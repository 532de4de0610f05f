"""The network and its checkpoints: reference logits, exact key names, round trips, clear errors."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from golden import GOLDEN, require_golden
from model import CheckpointError, ConfigError, DiffusionLM, ModelConfig, check_tokenizer
from model.masks import block_causal_mask, block_diffusion_mask


@pytest.fixture(scope="module")
def golden_lm():
    return DiffusionLM.from_pretrained(require_golden())


@pytest.fixture(scope="module")
def golden_logits():
    return load_file(str(require_golden() / "logits.safetensors"))


@pytest.mark.parametrize("seq", [0, 1, 2])
@pytest.mark.parametrize("mask_kind", ["full", "block8_bool", "block8_additive", "block8_ours"])
def test_logits_match_reference(golden_lm, golden_logits, seq, mask_kind):
    ids = golden_logits[f"seq{seq}.input_ids"]
    pos = golden_logits[f"seq{seq}.position_ids"]
    mask = {
        "full": None,
        "block8_bool": golden_logits[f"seq{seq}.block8_mask_bool"],
        "block8_additive": golden_logits[f"seq{seq}.block8_mask_additive"],
        "block8_ours": block_causal_mask(ids.shape[1], 8),
    }[mask_kind]
    expected = golden_logits[f"seq{seq}.logits_full" if mask_kind == "full" else f"seq{seq}.logits_block8"]
    with torch.no_grad():
        logits = golden_lm(ids, attention_mask=mask, position_ids=pos).logits
    assert logits.dtype == torch.float32
    assert (logits - expected).abs().max().item() <= 1e-3


def test_our_block_mask_equals_recorded_mask(golden_logits):
    for seq in range(3):
        recorded = golden_logits[f"seq{seq}.block8_mask_bool"]
        assert torch.equal(block_causal_mask(recorded.shape[-1], 8), recorded)


def test_state_dict_keys_are_the_reference_keys(golden_lm):
    lines = [l.split("\t") for l in (require_golden() / "keys.txt").read_text().splitlines() if l.strip()]
    expected = {key: json.loads(shape) for key, shape, _ in lines}
    ours = {k: list(v.shape) for k, v in golden_lm.state_dict().items()}
    assert ours == expected


def test_released_mini_layout_has_the_exact_key_names():
    """Build the real LLaDA2-mini config on the meta device and compare with the recorded key list."""
    lines = [l for l in (GOLDEN / "llada2_mini_keys.txt").read_text().splitlines() if l and not l.startswith("#")]
    expected = {l.split("\t")[0]: json.loads(l.split("\t")[1]) for l in lines}
    cfg = ModelConfig(vocab_size=157184, hidden_size=2048, intermediate_size=5120, num_hidden_layers=20,
                      num_attention_heads=16, num_key_value_heads=4, head_dim=128, num_experts=256,
                      num_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
                      moe_intermediate_size=512, first_k_dense_replace=1)
    with torch.device("meta"):
        lm = DiffusionLM(cfg)
    ours = {k: list(v.shape) for k, v in lm.state_dict().items()}
    assert ours == expected


def test_expert_bias_steers_selection_only(golden_lm, golden_logits):
    """Zeroing expert_bias must change routing (so it is used), and the bias never scales outputs."""
    ids = golden_logits["seq2.input_ids"]
    lm = DiffusionLM.from_pretrained(require_golden())
    for layer in lm.model.layers[1:]:
        layer.mlp.gate.expert_bias.zero_()
    with torch.no_grad():
        changed = lm(ids).logits
    assert (changed - golden_logits["seq2.logits_full"]).abs().max() > 1e-2
    gate = golden_lm.model.layers[1].mlp.gate
    x = torch.randn(5, golden_lm.config.hidden_size)
    idx, weights = gate(x)
    scores = torch.sigmoid(x @ gate.weight.T)
    picked = scores.gather(1, idx)
    torch.testing.assert_close(weights, picked / picked.sum(-1, keepdim=True) * gate.routed_scaling_factor)


def test_save_load_round_trip_is_bit_exact(tmp_path, golden_lm):
    golden_lm.save_pretrained(tmp_path / "single")
    golden_lm.save_pretrained(tmp_path / "sharded", max_shard_bytes=100_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1
    original = load_file(str(require_golden() / "model.safetensors"))
    for folder in ("single", "sharded"):
        lm = DiffusionLM.from_pretrained(tmp_path / folder)
        state = lm.state_dict()
        assert state.keys() == original.keys()
        for key, tensor in original.items():
            assert torch.equal(state[key], tensor), key
    assert json.loads((tmp_path / "single" / "config.json").read_text())["mask_token_id"] == 250


def test_bf16_load_and_forward(golden_logits):
    lm = DiffusionLM.from_pretrained(require_golden(), dtype=torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    with torch.no_grad():
        logits = lm(golden_logits["seq1.input_ids"]).logits
    assert logits.dtype == torch.float32
    # bf16 keeps about 3 significant digits; this fixture's sharp attention amplifies that, so compare
    # the logits as a whole rather than element by element.
    expected = golden_logits["seq1.logits_full"]
    cosine = torch.nn.functional.cosine_similarity(logits.flatten(), expected.flatten(), dim=0)
    assert cosine > 0.98
    assert (logits - expected).abs().mean() < 0.15 * expected.std()


def _copy_golden(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(require_golden(), folder)
    return folder


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    folder = _copy_golden(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.norm.weight"]
    state["model.layers.0.extra.weight"] = torch.zeros(2)
    state["lm_head.weight"] = torch.zeros(3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        DiffusionLM.from_pretrained(folder)
    message = str(err.value)
    assert "model.norm.weight" in message and "model.layers.0.extra.weight" in message
    assert "lm_head.weight: checkpoint [3, 3] vs model [256, 64]" in message


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiffusionLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(ModelConfig.tiny().to_dict()))
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        DiffusionLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("field,value,needle", [
    ("num_key_value_heads", 3, "multiple of num_key_value_heads"),
    ("mask_token_id", 5000, "mask_token_id"),
    ("partial_rotary_factor", 0.3, "rotary"),
    ("hidden_act", "gelu", "hidden_act"),
    ("num_hidden_layers", 0, "num_hidden_layers"),
])
def test_bad_config_values_are_named(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.tiny(**{field: value})


def test_tokenizer_check_names_every_disagreement():
    tok = SimpleNamespace(vocab_size=300, pad_id=0, eos_id=1, mask_id=2)
    check_tokenizer(ModelConfig.tiny(vocab_size=300, pad_token_id=0, eos_token_id=1, mask_token_id=2), tok)
    check_tokenizer(ModelConfig.tiny(vocab_size=512), tok)  # unset ids come from the tokenizer
    with pytest.raises(ConfigError, match=r"^tokenizer and model do not match: the tokenizer has 300 ids but the "
                                          r"model's vocab_size is 299; model mask_token_id=1 but the tokenizer's "
                                          r"mask id is 2; model pad_token_id=3 but the tokenizer's pad id is 0$"):
        check_tokenizer(ModelConfig.tiny(vocab_size=299, mask_token_id=1, pad_token_id=3), tok)
    with pytest.raises(ConfigError, match=r"model has no mask_token_id"):
        check_tokenizer(ModelConfig.tiny(vocab_size=300), tok, need_mask_id=True)


def test_config_round_trip_keeps_unknown_fields(tmp_path):
    cfg = ModelConfig.from_pretrained(require_golden())
    assert cfg.extra["transformers_version"] == "4.57.6" and cfg.rotary_dim == 8
    cfg.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
        (require_golden() / "config.json").read_text())


def test_tiny_dense_and_moe_train_step():
    torch.manual_seed(0)
    for cfg in (ModelConfig.tiny(vocab_size=64, hidden_size=32, head_dim=8, intermediate_size=64, num_hidden_layers=2),
                ModelConfig.tiny_moe(vocab_size=64, hidden_size=32, head_dim=8, moe_intermediate_size=16)):
        lm = DiffusionLM(cfg)
        ids = torch.randint(0, 64, (2, 16))
        loss = torch.nn.functional.cross_entropy(lm(ids).logits.flatten(0, 1), ids.flatten())
        loss.backward()
        grads = [p.grad for p in lm.parameters() if p.requires_grad]
        assert all(g is not None for g in grads[:3]) and torch.isfinite(loss)


def test_block_diffusion_mask_matches_definition():
    L, B = 12, 4
    docs = torch.tensor([[0] * 5 + [1] * 7])
    mask = block_diffusion_mask(L, B, doc_ids=docs)[0, 0]
    for q in range(2 * L):
        for k in range(2 * L):
            qb, kb = (q % L) // B, (k % L) // B
            q_noisy, k_noisy = q < L, k < L
            if q_noisy and k_noisy:
                allowed = qb == kb
            elif q_noisy:
                allowed = kb < qb
            elif k_noisy:
                allowed = False
            else:
                allowed = kb <= qb
            allowed = allowed and docs[0, q % L] == docs[0, k % L]
            assert bool(mask[q, k]) == bool(allowed), (q, k)


def test_padded_rows_give_the_same_logits_packed_or_not(golden_lm):
    """token_valid packs the real tokens for the projections/MLPs; padding must not change real outputs."""
    torch.manual_seed(0)
    lengths = [12, 5, 9]
    T, V = max(lengths), golden_lm.config.vocab_size
    ids = torch.randint(0, V - 2, (len(lengths), T))
    valid = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = (causal[None] & valid[:, None, :])[:, None]  # padded keys masked out
    mask = mask | torch.eye(T, dtype=torch.bool)  # every (padded) query sees itself: no empty rows
    positions = torch.stack([torch.arange(3) + n - 3 for n in lengths])  # each row's last three real tokens
    with torch.no_grad():
        padded = golden_lm(ids, attention_mask=mask, return_key_values=True, logits_positions=positions)
        packed = golden_lm(ids, attention_mask=mask, return_key_values=True, logits_positions=positions,
                           token_valid=valid)
        full = golden_lm(ids, attention_mask=mask, token_valid=valid).logits
    torch.testing.assert_close(packed.logits, padded.logits, atol=1e-4, rtol=1e-4)
    for (k0, v0), (k1, v1) in zip(padded.key_values, packed.key_values):
        for r, n in enumerate(lengths):
            torch.testing.assert_close(k1[r, :, :n], k0[r, :, :n], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(v1[r, :, :n], v0[r, :, :n], atol=1e-4, rtol=1e-4)
        assert k1[1, :, 5:].abs().sum() == 0  # padded slots are zeros, not computed
    for r, n in enumerate(lengths):
        torch.testing.assert_close(full[r, n - 3:n], packed.logits[r], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="padded"):
        golden_lm(ids, attention_mask=mask, logits_positions=torch.full((3, 1), T - 1), token_valid=valid)


def test_cache_writes_in_place_and_scratch_is_overwritten(golden_lm):
    """A cached forward writes its keys/values at their absolute slots: decoding block 2 over a kept
    block 1 gives the uncached logits, even after an earlier forward left other tokens in those slots."""
    from model.cache import KVCache
    from model.masks import window_block_mask

    torch.manual_seed(1)
    B, V = 8, golden_lm.config.vocab_size
    ids = torch.randint(0, V - 2, (1, 2 * B))
    with torch.no_grad():
        expected = golden_lm(ids, attention_mask=block_causal_mask(2 * B, B)).logits[:, B:]
        cache = KVCache.for_model(golden_lm, 1, 2 * B)

        def step(tokens, start):
            q_pos = torch.arange(start, start + tokens.shape[1])[None]
            k_pos = torch.arange(start + tokens.shape[1])[None]
            mask = window_block_mask(q_pos, k_pos, B, torch.ones_like(k_pos, dtype=torch.bool))
            return golden_lm(tokens, attention_mask=mask, position_ids=q_pos, past=cache).logits

        step(ids[:, :B], 0)
        cache.keep(torch.tensor([0]), [B])
        step(torch.randint(0, V - 2, (1, B)), B)  # a draft that is not kept: scratch in slots B..2B-1
        assert int(cache.lengths[0]) == B
        got = step(ids[:, B:], B)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="beyond the cache capacity"):
        cache.begin(torch.arange(2 * B + 1)[None], None)
