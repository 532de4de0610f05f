"""prepare_data: sources (stdlib, synthetic, local files), caching by config, clear errors on bad input."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import components.data.prepare as prep
from components.config import ConfigError, load_config
from components.data import (
    DEFAULT_DATA_CONFIG,
    DataConfig,
    DataError,
    SequenceTooLongError,
    cache_key,
    load_data_config,
    load_prepared,
    prepare_data,
)
from components.families import get_family, split_of
from model.tokenizer import TokenizerError

CONF_DATA = Path(__file__).resolve().parent.parent / "conf" / "data"


# Four short-answer families (the data tests check preparation, not the default pipeline's task mix).
FOUR_FAMILIES = ["cpt.synthetic.families=[permutation,sum,sudoku4,addition]", "cpt.synthetic.params={}",
                 "sft.synthetic.families=[permutation,sum,sudoku4,addition]", "sft.synthetic.params={}"]


def small(tmp_path, *extra):
    """The default config shrunk to a few hundred KB so each preparation takes about a second."""
    return load_data_config(overrides=[
        f"cache_dir={tmp_path / 'cache'}",
        "block_length=16", "max_seq_len=128", "cpt.seq_len=64",
        "tokenizer.vocab_size=512",
        "cpt.stdlib.max_bytes=150000", "cpt.synthetic.num_examples=50", "sft.synthetic.num_examples=60",
        *FOUR_FAMILIES, *extra,
    ])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_data(small(tmp_path_factory.mktemp("prep")))


def test_every_shipped_data_config_loads_and_default_matches_schema():
    files = sorted(CONF_DATA.glob("*.yaml"))
    assert DEFAULT_DATA_CONFIG in files
    for f in files:
        assert isinstance(load_config(DataConfig, f), DataConfig)
    assert load_data_config() == DataConfig()  # the YAML and the schema defaults agree


def test_default_prepared_data_shapes_and_invariants(prepared):
    tok, cpt, sft = prepared.tokenizer, prepared.cpt, prepared.sft
    assert not prepared.cache_hit and tok.vocab_size <= 512
    assert len(cpt) > 10 and cpt.seq_len == 64
    row = cpt[0]
    assert set(row) == {"input_ids", "doc_ids", "loss_mask"} and all(v.shape == (64,) for v in row.values())
    stats = prepared.manifest["stats"]
    assert stats["sources"]["cpt.stdlib"]["documents"] > 3  # stdlib files were read
    assert stats["cpt"]["documents"] == stats["sources"]["cpt.stdlib"]["documents"] + 4 * 50
    assert len(sft) == 4 * 60
    for i in range(0, len(sft), 37):
        item = sft[i]
        assert item["input_ids"].numel() % 16 == 0
        assert not bool((item["loss_mask"] & item["prompt_mask"]).any())
        reply = tok.decode(item["input_ids"][item["loss_mask"]].tolist())
        assert reply.endswith("<|eos|>") and "<|user|>" not in reply and "<|assistant|>" not in reply


def test_sft_rows_hold_train_split_instances_with_verifiable_answers(prepared):
    tok = prepared.tokenizer
    for i in range(0, len(prepared.sft), 23):
        item = prepared.sft[i]
        ids = item["input_ids"].tolist()
        prompt = tok.decode([t for t, p in zip(ids, item["prompt_mask"].tolist()) if p])
        assert prompt.startswith("<|user|>") and prompt.endswith("<|eos|><|assistant|>")
        text = prompt[len("<|user|>"): -len("<|eos|><|assistant|>")]
        head = text.split(":")[0].split(" ")[0]
        family = {"perm": "permutation", "sum": "sum", "sudoku": "sudoku4", "add": "addition"}[head]
        assert split_of(family, text) == "train"  # never a held-out instance
        reply = tok.decode([t for t, m in zip(ids, item["loss_mask"].tolist()) if m], skip_special_tokens=True)
        matches = [e for e in get_family(family).make("train", 60, 1) if e.prompt == text]
        assert matches and get_family(family).score(reply, matches[0])


def test_second_run_is_a_cache_hit_without_rebuilding(tmp_path, monkeypatch):
    cfg = small(tmp_path)
    first = prepare_data(cfg)
    assert not first.cache_hit

    def boom(*a, **k):
        raise AssertionError("rebuilt although the cache holds this config")

    monkeypatch.setattr(prep, "_build", boom)
    again = prepare_data(small(tmp_path))
    assert again.cache_hit and again.root == first.root
    assert again.sft.rows.input_ids.equal(first.sft.rows.input_ids)
    assert again.cpt.packed.input_ids.equal(first.cpt.packed.input_ids)
    assert again.tokenizer.encode("def f(): pass") == first.tokenizer.encode("def f(): pass")
    with pytest.raises(AssertionError, match="rebuilt"):
        prepare_data(small(tmp_path), force=True)
    # the cache location is not part of the key; content-changing fields are
    assert cache_key(cfg) == cache_key(small(tmp_path / "elsewhere"))
    assert cache_key(cfg) != cache_key(small(tmp_path, "sft.fill=pad"))
    assert cache_key(cfg) != cache_key(small(tmp_path, "cpt.synthetic.seed=5"))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_failed_build_leaves_no_cache_entry(tmp_path):
    cfg = small(tmp_path, "max_seq_len=16", "cpt.seq_len=16")  # synthetic conversations exceed 16 tokens
    with pytest.raises(SequenceTooLongError, match="more than max_seq_len=16"):
        prepare_data(cfg)
    cache = tmp_path / "cache"
    assert (list(cache.iterdir()) if cache.exists() else []) == []  # neither a result nor a tmp dir


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_local_jsonl_parquet_and_text_sources(tmp_path):
    docs = _write_jsonl(tmp_path / "docs.jsonl", [{"body": f"x{i} = {i} * 2\n" * 5} for i in range(30)])
    pq.write_table(pa.table({"q": [f"add: {i}+1=" for i in range(20)], "a": [str(i + 1) for i in range(20)]}),
                   tmp_path / "pairs.parquet")
    chats = _write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"u{i}"},
                      {"role": "assistant", "content": f"a{i}"}]} for i in range(10)
    ] + [{"messages": [{"role": "user", "content": "no reply"}]}])  # skipped: nothing to learn
    (tmp_path / "texts").mkdir()
    for i in range(3):
        (tmp_path / "texts" / f"{i}.txt").write_text(f"line one {i}\nline two\n")
    cfg = small(tmp_path,
                "cpt.stdlib.enabled=false", "cpt.synthetic.num_examples=5", "sft.synthetic.enabled=false",
                f"cpt.external=[{{path: '{docs}', text_field: body}}, {{kind: file, path: '{tmp_path}/texts/*.txt'}}]",
                f"sft.external=[{{path: '{tmp_path}/pairs.parquet', prompt_field: q, response_field: a}}, "
                f"{{path: '{chats}'}}]")
    out = prepare_data(cfg)
    src = out.manifest["stats"]["sources"]
    assert set(src) == {"cpt.synthetic", "cpt.external[0]", "cpt.external[1]", "sft.external[0]", "sft.external[1]"}
    assert src["cpt.external[0]"]["documents"] == 30
    assert src["cpt.external[1]"]["documents"] == 3  # one document per text file
    assert src["sft.external[0]"]["conversations"] == 20 and src["sft.external[1]"]["conversations"] == 10
    assert len(out.sft) == 30
    tok = out.tokenizer
    last = out.sft[29]
    assert tok.decode(last["input_ids"][last["loss_mask"]].tolist()).startswith("a9<|eos|>")
    # editing a local file changes the cache key (its size / mtime are part of it)
    key = cache_key(cfg)
    with open(docs, "a") as fh:
        fh.write(json.dumps({"body": "more"}) + "\n")
    assert cache_key(cfg) != key


# ------------------------------------------------------------------------------------------ bad input


def test_missing_empty_and_malformed_files_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{oops\n')
    (tmp_path / "junk.parquet").write_bytes(b"not parquet" * 10)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "latin1.txt").write_bytes(b"line one\nna\xefve\n")
    (tmp_path / "badquote.csv").write_text('text,n\n"fine",1\n"open"quote,2\n')
    _write_jsonl(tmp_path / "notext.jsonl", [{"body": "x"}])
    _write_jsonl(tmp_path / "emptytext.jsonl", [{"text": ""}, {"text": "   "}])
    cases = {
        "missing.jsonl": "file not found",
        "nomatch*.jsonl": "no file matches",
        "empty.jsonl": "dataset is empty",
        "blank.jsonl": "dataset is empty",
        "broken.jsonl": r".*broken\.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes",
        "latin1.jsonl": r".*latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\)",
        "latin1.txt": r".*latin1\.txt:2: not UTF-8 text \(byte 0xef at column 3\)",
        "badquote.csv": r".*badquote\.csv:3: invalid CSV",
        "junk.parquet": r".*junk\.parquet: cannot read as parquet",
        "notext.jsonl": "field 'text' not found; record fields are \\['body'\\]",
        "emptytext.jsonl": "dataset is empty: no non-empty 'text'",
        ".": "not a regular file",
    }
    for name, message in cases.items():
        cfg = small(tmp_path, f"cpt.external=[{{kind: file, path: '{tmp_path / name}'}}]")
        with pytest.raises(DataError, match=rf"cpt\.external\[0\] \(file .*\): {message}"):
            prepare_data(cfg)


def test_csv_cells_stay_strings_and_lines_are_counted_from_the_header(tmp_path):
    from components.data.config import ExternalSource
    from components.data.sources import load_records, records_to_conversations

    path = tmp_path / "pairs.csv"
    path.write_text('prompt,response\n"pad: 7",007\n"multi\nline",0042\n')
    src = ExternalSource(path=str(path))
    records, fmt = load_records("sft.external[0]", src, None)
    assert fmt == "csv" and [r["response"] for r in records] == ["007", "0042"]
    convs = records_to_conversations("sft.external[0]", src, records, fmt)
    assert [c[1]["content"] for c in convs] == ["007", "0042"] and convs[1][0]["content"] == "multi\nline"
    path.write_text(path.read_text() + "x,1,extra\n")  # a quoted newline makes this physical line 5
    with pytest.raises(DataError, match=r"sft\.external\[0\] \(file .*\): .*pairs\.csv:5: 3 fields but the header has"):
        load_records("sft.external[0]", src, None)


def test_sft_file_without_conversations_is_refused(tmp_path):
    _write_jsonl(tmp_path / "docs.jsonl", [{"text": "hello"}])
    _write_jsonl(tmp_path / "bad_roles.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}])
    (tmp_path / "a.txt").write_text("hi")
    for name, message in [("docs.jsonl", "need a 'messages' field"), ("bad_roles.jsonl", "none of 1 records"),
                          ("a.txt", "plain text files have no conversations")]:
        cfg = small(tmp_path, f"sft.external=[{{kind: file, path: '{tmp_path / name}'}}]")
        with pytest.raises(DataError, match=message):
            prepare_data(cfg)


def test_tokenizer_without_mask_token_stops_before_reading_data(tmp_path, monkeypatch):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    backend = Backend(models.BPE())
    backend.add_special_tokens(["</s>"])
    (tmp_path / "tok").mkdir()
    backend.save(str(tmp_path / "tok" / "tokenizer.json"))
    monkeypatch.setattr(prep, "cpt_documents", lambda *a: pytest.fail("read data before checking the tokenizer"))
    with pytest.raises(TokenizerError, match="no mask token"):
        prepare_data(small(tmp_path, f"tokenizer.path={tmp_path / 'tok'}"))


def test_checkpoint_tokenizer_is_used_as_is(tmp_path, prepared):
    """tokenizer.path: the given tokenizer is loaded, not retrained (ids stay the checkpoint's)."""
    out = prepare_data(small(tmp_path, f"tokenizer.path={prepared.tokenizer_path}", "tokenizer.vocab_size=999"))
    assert out.manifest["tokenizer"]["trained"] is False
    assert out.tokenizer.backend.to_str() == prepared.tokenizer.backend.to_str()


def test_unknown_key_and_bad_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="cpt.seq_lenn"):
        load_data_config(overrides=["cpt.seq_lenn=3"])
    with pytest.raises(ConfigError, match=r"'colour' not in 'ExternalSource'"):
        load_data_config(overrides=["sft.external=[{path: a.jsonl, colour: red}]"])
    with pytest.raises(ConfigError, match=r"sft\.synthetic\.colour"):
        load_data_config(overrides=["sft.synthetic.colour=red"])
    with pytest.raises(ConfigError, match="block_length"):
        load_data_config(overrides=["block_length=abc"])
    bad_values = {
        "cpt.seq_len=100": r"data\.cpt\.seq_len: must be a positive multiple of block_length",
        "cpt.seq_len=1024": r"data\.cpt\.seq_len: \(1024\) exceeds max_seq_len",
        "max_seq_len=500": r"data\.max_seq_len",
        "sft.too_long=maybe": r"data\.sft\.too_long: must be one of",
        "sft.fill=zero": r"data\.sft\.fill",
        "tokenizer.vocab_size=10": r"data\.tokenizer\.vocab_size",
        "cpt.synthetic.families=[chess]": r"data\.cpt\.synthetic\.families: unknown \['chess'\]",
        "cpt.stdlib.max_bytes=0": r"data\.cpt\.stdlib\.max_bytes: must be >= 1",
        "sft.synthetic.num_examples=0": r"data\.sft\.synthetic\.num_examples",
        "sft.external=[{kind: file}]": r"data\.sft\.external\[0\]\.path: is required",
        "sft.external=[{kind: web, path: x}]": r"data\.sft\.external\[0\]\.kind: must be one of",
        "sft.external=[{path: x, format: xml}]": r"data\.sft\.external\[0\]\.format",
        "sft.synthetic.enabled=false": r"data\.sft: is enabled but has no enabled source",
    }
    for override, message in bad_values.items():
        with pytest.raises(ValueError, match=message):
            load_data_config(overrides=[override])


def test_load_prepared_refuses_other_directories(tmp_path, prepared):
    with pytest.raises(DataError, match="not a prepared-data directory"):
        load_prepared(tmp_path)
    assert load_prepared(prepared.root).manifest["key"] == prepared.manifest["key"]


def test_cli_prepares_and_reports(tmp_path, capsys):
    from components.data import cli

    args = ["--config", str(DEFAULT_DATA_CONFIG), f"cache_dir={tmp_path}", "block_length=16", "max_seq_len=64",
            "cpt.enabled=false", "tokenizer.vocab_size=400", "sft.synthetic.num_examples=10", *FOUR_FAMILIES]
    assert cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["sft_rows"] == 40 and first["cpt_rows"] == 0 and not first["cache_hit"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["cache_hit"]
    assert os.path.isdir(first["path"])


def test_evaluation_prompt_tokens_equal_the_sft_prompt_tokens(prepared):
    """Evaluation builds prompts with to_messages + apply_chat_template; SFT rows must start with
    exactly those ids, followed by the reply in the loss."""
    from components.families import to_messages

    tok = prepared.tokenizer
    examples = [e for f in ("permutation", "sum", "sudoku4", "addition") for e in get_family(f).make("train", 60, 1)]
    for i in range(0, len(examples), 31):
        e = examples[i]
        prompt = tok.encode(tok.apply_chat_template(to_messages(e), add_generation_prompt=True))
        row = prepared.sft[i]
        assert row["input_ids"][: len(prompt)].tolist() == prompt
        assert bool(row["prompt_mask"][: len(prompt)].all()) and not bool(row["prompt_mask"][len(prompt):].any())
        reply = tok.encode(e.answer) + [tok.eos_id]
        assert row["input_ids"][len(prompt): len(prompt) + len(reply)].tolist() == reply


def test_hub_source_plumbing_without_network(tmp_path, monkeypatch):
    """Hub sources go through datasets.load_dataset(name, config, split=...); faked here (no network)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(7)]
        if streaming:
            return datasets.IterableDataset.from_generator(lambda: iter(rows))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = small(tmp_path, "cpt.enabled=false", "sft.synthetic.enabled=false",
                "sft.external=[{kind: hub, path: org/qa, name: main, prompt_field: question, response_field: answer},"
                " {kind: hub, path: org/qa, split: test, max_examples: 3, prompt_field: question,"
                " response_field: answer}]")
    out = prepare_data(cfg)
    assert calls == [("org/qa", "main", "train", False), ("org/qa", None, "test", True)]
    assert out.manifest["stats"]["sources"]["sft.external[1]"]["conversations"] == 3
    assert len(out.sft) == 10


def test_synthetic_family_parameters_reach_the_generator(tmp_path):
    cfg = small(tmp_path, "cpt.enabled=false", "sft.synthetic.families=[addition]",
                "sft.synthetic.params={addition: {min_digits: 3, max_digits: 3}}")
    out = prepare_data(cfg)
    tok = out.tokenizer
    for i in range(len(out.sft)):
        item = out.sft[i]
        prompt = tok.decode(item["input_ids"][item["prompt_mask"]].tolist(), skip_special_tokens=True)
        a, b = prompt.removeprefix("add: ").removesuffix("=").split("+")
        assert len(a) == len(b) == 3
    assert cache_key(cfg) != cache_key(small(tmp_path, "cpt.enabled=false", "sft.synthetic.families=[addition]",
                                             "sft.synthetic.params={}"))
    with pytest.raises(ValueError, match=r"data\.sft\.synthetic\.params\.addition: .*unknown parameter"):
        small(tmp_path, "sft.synthetic.families=[addition]", "sft.synthetic.params={addition: {digits: 3}}")
    with pytest.raises(ValueError, match=r"data\.sft\.synthetic\.params\.sum: is not one of the selected"):
        small(tmp_path, "sft.synthetic.families=[addition]", "sft.synthetic.params={sum: {min_len: 3}}")
