"""`draftedit generate` and the trajectory views people look at."""

import re

import pytest

from components import generate_cli, visualize
from components.presets import load_decode_config
from golden import load_cases, require_golden
from model import DecodeConfig, DiffusionLM, generate


def test_presets_load_and_differ():
    speedy, quality = load_decode_config("speedy"), load_decode_config("quality")
    assert isinstance(speedy, DecodeConfig)
    assert speedy.threshold < quality.threshold
    assert load_decode_config("speedy", ["gen_length=64"], block_length=8).gen_length == 64


@pytest.mark.parametrize("override,needle", [(["bogus=1"], "bogus"), (["threshold=abc"], "threshold")])
def test_preset_overrides_are_checked(override, needle):
    with pytest.raises(ValueError, match=needle):
        load_decode_config("quality", override)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown decoding preset .fast.; known: quality, speedy"):
        load_decode_config("fast")


def test_replay_marks_drafts_and_edits():
    case = next(c for c in load_cases() if c["t2t_edits"] > 0)
    lm = DiffusionLM.from_pretrained(require_golden())
    keys = ["block_length", "gen_length", "threshold", "editing_threshold", "max_post_steps", "num_to_transfer"]
    res = generate(lm, [case["prompt"]], DecodeConfig(**{k: case["params"][k] for k in keys}, record_trajectory=True))
    frames = visualize.replay(res.trajectories[0])
    assert frames[0].states.count(visualize.MASKED) == len(frames[0].tokens) - len(case["prompt"])
    assert frames[-1].tokens == res.canvases[0]
    assert any(visualize.EDITED in f.states for f in frames)
    assert visualize.MASKED not in frames[-1].states[len(case["prompt"]):]


def test_cli_saves_html_and_gif(tmp_path, capsys):
    prompt = ",".join(map(str, load_cases()[0]["prompt"]))
    html_file, gif_file = tmp_path / "t.html", tmp_path / "t.gif"
    common = ["--model", str(require_golden()), "--ids", prompt, "--gen-length", "24", "--block-length", "8"]
    assert generate_cli.main(common + ["--preset", "speedy", "--save", str(html_file), "--no-live"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\d+ tokens · \d+ forwards · TPF", out)
    page = html_file.read_text()
    assert page.startswith("<!doctype html>") and "const frames = [" in page and "<script src" not in page
    assert generate_cli.main(common + ["--preset", "quality", "--save", str(gif_file), "--no-live"]) == 0
    from PIL import Image
    with Image.open(gif_file) as gif:
        assert gif.n_frames > 5


def test_cli_bad_input(tmp_path, capsys):
    """Each mistake is one line on stderr and exit code 2, before any decoding."""
    base = ["--model", str(require_golden())]
    cases = [
        (["--prompt", "hello"], "needs a tokenizer"),
        (["--ids", "1,x"], "comma-separated integers"),
        (["--ids", "1,2", "--threshold", "2", "--no-live"], "threshold"),
        (["--ids", "1,2", "--save", str(tmp_path / "x.txt")], ".html or .gif"),
    ]
    for args, needle in cases:
        assert generate_cli.main(base + args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and err.startswith("draftedit generate: error:"), err
