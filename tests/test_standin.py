"""Stand-in checkpoints (`draftedit checkpoint init|check`): the released LLaDA2 layout with random weights.

The scaled stand-in must load exactly as written; the full shape's key names must be the release's;
a malformed folder is one line through the CLI's error path."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from components.standin import load_standin, model_config
from flows.cli import main
from model import DiffusionLM, ModelConfig
from model.checkpoint import config_shapes, random_model
from model.tokenizer import load_tokenizer
from tests.golden import GOLDEN


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The CPU shape in shards of at most 1 MB (so a folder has several)."""
    folder = tmp_path_factory.mktemp("standin") / "cpu"
    assert main(["checkpoint", "init", "--like", "llada2.1-mini", "--shape", "cpu", "--shard-bytes", "1000000",
                 "--out", str(folder)]) == 0
    return folder


@pytest.fixture
def copy(standin, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(standin, target)
    return target


def test_full_shape_has_the_release_key_names_and_shapes():
    lines = [line.split("\t") for line in (GOLDEN / "llada2_mini_keys.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    expected = {key: json.loads(shape) for key, shape, _ in lines}
    config = model_config(load_standin("llada2.1-mini"), {})
    # built on the meta device: nothing is allocated
    written = {key: list(shape) for key, shape in config_shapes(DiffusionLM, config).items()}
    assert written == expected
    assert sum(torch.Size(s).numel() for s in expected.values()) == 16_255_643_392


def test_scaled_standin_loads_exactly(standin):
    config = json.loads((standin / "config.json").read_text())
    release = load_standin("llada2.1-mini").config
    assert set(release) <= set(config)  # every field of the release's config.json
    assert (config["num_hidden_layers"], config["first_k_dense_replace"], config["num_experts"],
            config["num_shared_experts"], config["hidden_size"], config["vocab_size"]) == (4, 1, 8, 1, 128, 4096)
    assert config["rotary_dim"] == 16 and config["torch_dtype"] == "bfloat16"
    index = json.loads((standin / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((standin / s).is_file() for s in shards)
    assert all(t.dtype == torch.bfloat16 for s in shards for t in load_file(standin / s).values())

    loaded = DiffusionLM.from_pretrained(standin)
    in_memory = random_model(DiffusionLM, ModelConfig.from_pretrained(standin), torch.bfloat16, seed=0)
    ours, theirs = loaded.state_dict(), in_memory.state_dict()
    assert ours.keys() == theirs.keys() == index["weight_map"].keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["model.layers.1.mlp.experts.7.up_proj.weight"].std() > 0  # drawn, not left empty
    ids = torch.randint(0, config["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, in_memory(ids).logits)


def test_standin_tokenizer_has_the_release_tokens_and_chat_markup(standin):
    tok = load_tokenizer(standin)
    config = json.loads((standin / "config.json").read_text())
    assert tok.id_to_token(tok.mask_id) == "<|mask|>" and tok.id_to_token(tok.eos_id) == "<|endoftext|>"
    assert tok.pad_id == tok.eos_id == config["pad_token_id"] and tok.vocab_size <= config["vocab_size"]
    chat = [{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": "return a + b"}]
    assert tok.apply_chat_template(chat[:1]) == ("<role>SYSTEM</role>detailed thinking off<|role_end|>"
                                                 "<role>HUMAN</role>def add(a, b):<|role_end|><role>ASSISTANT</role>")
    ids, is_reply = tok.encode_chat(chat)
    assert tok.decode([i for i, r in zip(ids, is_reply) if r]) == "return a + b<|role_end|>"
    assert tok.token_to_id("<role>") in tok.special_ids
    system = [{"role": "system", "content": "be brief"}, *chat[:1]]
    assert tok.apply_chat_template(system).startswith("<role>SYSTEM</role>be brief\ndetailed thinking off<|role_end|>"
                                                      "<role>HUMAN</role>")
    with pytest.raises(ValueError, match="unknown chat role: tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_generate_runs_on_the_standin(standin, capsys):
    code, out, err = _cli(capsys, "generate", "--model", str(standin), "--prompt", "def add(a, b):", "--chat",
                          "--gen-length", "16", "--block-length", "8", "--no-live")
    assert code == 0, err
    assert "forwards" in out


def test_check_reports_a_sound_folder(standin, capsys):
    code, out, _ = _cli(capsys, "checkpoint", "check", str(standin))
    summary = json.loads(out)
    assert code == 0 and summary["dtype"] == "BF16" and summary["tensors"] == 117 and len(summary["shards"]) > 1


def _one_line_error(capsys, *argv) -> str:
    code, _, err = _cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_config_is_one_line(copy, capsys):
    (copy / "config.json").unlink()
    assert "no config.json at" in _one_line_error(capsys, "checkpoint", "check", str(copy))


def test_missing_tokenizer_is_one_line(copy, capsys):
    (copy / "tokenizer.json").unlink()
    assert "no tokenizer.json found at" in _one_line_error(capsys, "checkpoint", "check", str(copy))


def test_missing_shard_is_one_line(copy, capsys):
    sorted(copy.glob("model-*.safetensors"))[1].unlink()
    line = _one_line_error(capsys, "checkpoint", "check", str(copy))
    assert "names shard files that do not exist" in line and "model-00002-of-" in line
    assert "names shard files that do not exist" in _one_line_error(
        capsys, "generate", "--model", str(copy), "--prompt", "hi", "--no-live")


def test_tensor_with_the_wrong_shape_is_one_line(copy, capsys):
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    shard = copy / index["weight_map"]["model.norm.weight"]
    tensors = load_file(shard)
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:100].clone()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    expected = "model.norm.weight: checkpoint [100] vs model [128]"
    assert expected in _one_line_error(capsys, "checkpoint", "check", str(copy))
    assert expected in _one_line_error(capsys, "generate", "--model", str(copy), "--prompt", "hi", "--no-live")


def test_index_naming_a_tensor_its_shard_lacks_is_one_line(copy, capsys):
    path = copy / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"]["model.norm.weight"] = next(n for n in sorted(set(index["weight_map"].values()))
                                                    if n != index["weight_map"]["model.norm.weight"])
    path.write_text(json.dumps(index))
    assert "shards that do not hold them: model.norm.weight" in _one_line_error(
        capsys, "checkpoint", "check", str(copy))


@pytest.mark.parametrize("options, expected", [
    (["--shape", "cpu", "--experts", "6"], "num_experts (6) must be divisible by n_group (4)"),
    (["--shape", "cpu", "--vocab", "200"], "vocab: 200 leaves no room for the byte-level BPE"),
    (["--shape", "tiny"], "unknown stand-in shape 'tiny'; known: cpu"),
    (["--like", "llada9"], "unknown released model 'llada9'"),
])
def test_bad_shape_is_one_line_before_anything_is_written(tmp_path, capsys, options, expected):
    argv = ["checkpoint", "init", "--like", "llada2.1-mini", *options, "--out", str(tmp_path / "out")]
    assert expected in _one_line_error(capsys, *argv)
    assert not (tmp_path / "out").exists()


def test_shape_file_with_an_unknown_option_is_one_line(tmp_path, capsys):
    shape = tmp_path / "shape.yaml"
    shape.write_text("layers: 2\nrouted_experts: 4\n")
    line = _one_line_error(capsys, "checkpoint", "init", "--like", "llada2.1-mini", "--shape", str(shape),
                           "--out", str(tmp_path / "out"))
    assert "'routed_experts' is not a shape option" in line and str(shape) in line


def test_existing_folder_is_kept_without_force(standin, capsys):
    before = sorted(p.name for p in standin.iterdir())
    line = _one_line_error(capsys, "checkpoint", "init", "--like", "llada2.1-mini", "--shape", "cpu",
                           "--out", str(standin))
    assert "exists and is not empty; pass --force" in line and sorted(p.name for p in standin.iterdir()) == before


def test_writer_holds_one_shard_at_a_time(tmp_path, monkeypatch):
    """At every shard write, the weights in memory are that shard's and no more (the full shape is 32 GB)."""
    import model.checkpoint as checkpoint

    seen: dict = {}
    init, write = checkpoint._init_module, checkpoint._write_shard

    def remember_network(lm, name, seed):
        seen["lm"] = lm
        return init(lm, name, seed)

    def measure(path, i, n, shard):
        live = sum(t.numel() * t.element_size() for t in seen["lm"].state_dict().values() if not t.is_meta)
        seen.setdefault("live", []).append((live, sum(t.numel() * t.element_size() for t in shard.values())))
        return write(path, i, n, shard)

    monkeypatch.setattr(checkpoint, "_init_module", remember_network)
    monkeypatch.setattr(checkpoint, "_write_shard", measure)
    config = model_config(load_standin("llada2.1-mini"), {"layers": 3, "experts": 8, "groups": 4, "topk_groups": 2,
                                                          "experts_per_token": 2, "hidden": 64, "heads": 4,
                                                          "kv_heads": 2, "head_dim": 16, "vocab": 512})
    summary = checkpoint.save_random_pretrained(DiffusionLM, config, tmp_path, max_shard_bytes=100_000)
    assert summary["shards"] == len(seen["live"]) > 3
    assert all(live == shard for live, shard in seen["live"])
