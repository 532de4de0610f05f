"""Tokenizer: BPE training with special tokens, chat formatting, loss spans, save/load, bad tokenizers."""

import json

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from components.data.bpe import train_bpe_tokenizer
from model.tokenizer import (
    BUILTIN_CHAT_TEMPLATE,
    DEFAULT_SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "class Foo:\n    pass\n# héllo wörld ∑\n",
    "sum 23: 4 ? ? 7 ? ?\n4 9 0 7 3 0",
    "perm: E B A C F; C before A\nC A F E B",
] * 20

CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "add: 12+30="},
    {"role": "assistant", "content": "42"},
    {"role": "user", "content": "sort: 3 1 2"},
    {"role": "assistant", "content": "1 2 3"},
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=400, min_frequency=2)


def test_special_tokens_have_fixed_ids(tok):
    assert (tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 2)
    assert [tok.id_to_token(i) for i in range(len(DEFAULT_SPECIAL_TOKENS))] == list(DEFAULT_SPECIAL_TOKENS)
    assert tok.special_ids == set(range(len(DEFAULT_SPECIAL_TOKENS)))
    assert tok.vocab_size <= 400


@pytest.mark.parametrize("text", CORPUS[:4] + ["unseen: ₿ 🙂 \t\r\n 000123", ""])
def test_roundtrip_is_lossless(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_digits_are_one_token_each(tok):
    ids = tok.encode("4690")
    assert [tok.decode([i]) for i in ids] == ["4", "6", "9", "0"]


def test_special_strings_parse_only_when_asked(tok):
    assert tok.encode("<|mask|>") == [tok.mask_id]
    raw = tok.encode("<|mask|><|eos|>", parse_special=False)
    assert tok.mask_id not in raw and tok.eos_id not in raw
    assert tok.decode(raw) == "<|mask|><|eos|>"
    assert tok.encode_batch(["a<|eos|>"], parse_special=False)[0] == tok.encode("a<|eos|>", parse_special=False)


def test_builtin_chat_template(tok):
    text = tok.apply_chat_template(CHAT[:2])
    assert text == "<|system|>be brief<|eos|><|user|>add: 12+30=<|eos|><|assistant|>"
    assert tok.apply_chat_template(CHAT[:3], add_generation_prompt=False).endswith("<|assistant|>42<|eos|>")
    with pytest.raises(ValueError, match="unknown chat role 'tool'"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        tok.apply_chat_template([{"role": "user"}])


def test_encode_chat_marks_exactly_the_replies(tok):
    ids, is_reply = tok.encode_chat(CHAT)
    assert ids == tok.encode(tok.apply_chat_template(CHAT, add_generation_prompt=False))
    reply_text = tok.decode([i for i, r in zip(ids, is_reply) if r])
    assert reply_text == "42<|eos|>1 2 3<|eos|>"  # content + end of turn, never the role marker
    prompt_text = tok.decode([i for i, r in zip(ids, is_reply) if not r])
    assert "42" not in prompt_text and prompt_text.count("<|assistant|>") == 2


def test_generation_prompt_ids_are_a_prefix_of_the_training_ids(tok):
    """What evaluation feeds the decoder equals what SFT trained on, token for token."""
    ids, is_reply = tok.encode_chat(CHAT[:3])
    prompt = tok.encode(tok.apply_chat_template(CHAT[:2], add_generation_prompt=True))
    assert ids[: len(prompt)] == prompt and not any(is_reply[: len(prompt)]) and all(is_reply[len(prompt):])


def test_save_load_roundtrip_uses_equivalent_jinja_template(tok, tmp_path):
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["mask_token"] == "<|mask|>" and cfg["chat_template"] == BUILTIN_CHAT_TEMPLATE
    back = load_tokenizer(tmp_path)
    ids = ("mask_id", "eos_id", "pad_id", "vocab_size")
    assert [getattr(back, a) for a in ids] == [getattr(tok, a) for a in ids]
    assert back.chat_template == BUILTIN_CHAT_TEMPLATE
    for add in (True, False):
        for n in range(1, len(CHAT) + 1):
            assert back.apply_chat_template(CHAT[:n], add) == tok.apply_chat_template(CHAT[:n], add)
    assert back.encode_chat(CHAT) == tok.encode_chat(CHAT)
    assert back.encode("x = 1  # ok") == tok.encode("x = 1  # ok")
    with pytest.raises(ValueError, match="unknown chat role"):
        back.apply_chat_template([{"role": "tool", "content": "x"}])
    assert load_tokenizer(tmp_path / "tokenizer.json").mask_id == tok.mask_id  # file path works too


def _plain_backend(tokens):
    """A byte-level BPE backend with the given special tokens (like a foreign checkpoint's)."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer=trainer)
    return backend


def test_tokenizer_without_mask_token_fails_clearly(tmp_path):
    _plain_backend(["</s>", "<pad>"]).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="no mask token"):
        load_tokenizer(tmp_path)


def test_checkpoint_style_config_with_addedtoken_dicts_and_named_templates(tmp_path):
    """HF tokenizer_config.json: tokens as AddedToken dicts, chat_template as a list, pad absent."""
    _plain_backend(["<|endoftext|>", "<|mask|>", "<role>"]).save(str(tmp_path / "tokenizer.json"))
    template = ("{% for m in messages %}<role>{{ m['role'] }}:{{ m['content'] }}{{ eos_token }}{% endfor %}"
                "{% if add_generation_prompt %}<role>assistant:{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": {"content": "<|endoftext|>", "special": True},
        "mask_token": "<|mask|>",
        "chat_template": [{"name": "default", "template": template}],
    }))
    t = load_tokenizer(tmp_path)
    assert t.pad_id == t.eos_id  # LLaDA2 convention when no pad token is named
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert t.apply_chat_template(msgs[:1]) == "<role>user:hi<|endoftext|><role>assistant:"
    ids, is_reply = t.encode_chat(msgs)
    assert t.decode([i for i, r in zip(ids, is_reply) if r]) == "yo<|endoftext|>"


def test_mask_token_found_by_known_name_or_argument(tmp_path):
    _plain_backend(["</s>", "[MASK]", "<m>"]).save(str(tmp_path / "tokenizer.json"))
    t = load_tokenizer(tmp_path)
    assert t.id_to_token(t.mask_id) == "[MASK]" and t.id_to_token(t.eos_id) == "</s>"
    assert t.id_to_token(load_tokenizer(tmp_path, mask_token="<m>").mask_id) == "<m>"
    with pytest.raises(TokenizerError, match="mask_token '<nope>' is not in the vocabulary"):
        load_tokenizer(tmp_path, mask_token="<nope>")
    with pytest.raises(TokenizerError, match="must differ"):
        load_tokenizer(tmp_path, mask_token="</s>")
    with pytest.raises(TokenizerError, match="no chat template"):  # no template, no role tokens
        t.apply_chat_template([{"role": "user", "content": "hi"}])


def test_non_prefix_stable_template_is_refused(tmp_path):
    _plain_backend(["</s>", "<|mask|>"]).save(str(tmp_path / "tokenizer.json"))
    # renders the number of messages first, so every prefix changes the beginning of the text
    template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    t = load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="not prefix-stable"):
        t.encode_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_missing_or_corrupt_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizers file"):
        load_tokenizer(tmp_path)


def test_training_refuses_tiny_vocab_and_empty_corpus():
    with pytest.raises(ValueError, match="vocab_size must be >="):
        train_bpe_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe_tokenizer([], vocab_size=400)


def test_model_tokenizer_imports_only_pure_libraries():
    """model/ stays pure: the tokenizer module imports the standard library, tokenizers and jinja2 only
    (besides its own package's stdlib-only helpers, such as model/files.py)."""
    import ast
    import sys
    from pathlib import Path

    import model.tokenizer as mt

    tree = ast.parse(Path(mt.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
              and n.level == 0}
    own = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert own <= {"files"}
    assert roots - set(sys.stdlib_module_names) - {"__future__"} == {"tokenizers", "jinja2"}
