"""A randomly initialised dense LLaDA2-layout model, for speed figures without a trained checkpoint.

`init="peaked"` draws weights like the golden fixtures (N(0, 1/fan_in), a sharper output head) so
that drafting commits several tokens per forward, as a trained model does; `init="default"` keeps
the near-uniform outputs of a fresh model (one token per forward). The mask token is never
predicted, as in the golden fixtures. Random prompts are token ids below the two special ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from model import DiffusionLM, ModelConfig
from model.files import atomic_write

INITS = ("default", "peaked")
SPEC_FILE = "random_model.json"  # the arguments the checkpoint beside it was built with


def build_random_model(*, vocab: int = 4096, hidden: int = 512, intermediate: int = 1536, layers: int = 8,
                       heads: int = 8, kv_heads: int = 4, head_dim: int = 64, init: str = "peaked",
                       head_scale: float = 3.0, seed: int = 0, max_positions: int = 4096) -> DiffusionLM:
    """The model in eval mode; the last two ids are mask (vocab - 1) and EOS/pad (vocab - 2)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    cfg = ModelConfig.tiny(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                           head_dim=head_dim, max_position_embeddings=max_positions, mask_token_id=vocab - 1,
                           eos_token_id=vocab - 2, pad_token_id=vocab - 2)
    torch.manual_seed(seed)
    lm = DiffusionLM(cfg)
    with torch.no_grad():
        if init == "peaked":
            for name, p in lm.named_parameters():
                if p.dim() == 2 and "embeddings" not in name:
                    p.normal_(0.0, p.shape[1] ** -0.5)
            lm.lm_head.weight.mul_(head_scale)
        lm.lm_head.weight[cfg.mask_token_id].zero_()
    return lm.eval()


def random_prompts(count: int, min_length: int, max_length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """`count` prompts of random ids (never the two special ids), lengths drawn in [min_length, max_length]."""
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(min_length, max_length + 1, (count,), generator=g).tolist()
    return [torch.randint(0, vocab - 2, (n,), generator=g).tolist() for n in lengths]


def save_random_model(folder: str | os.PathLike, **sizes) -> Path:
    """Build the model (keyword arguments of build_random_model) into `folder`. A checkpoint built
    there with the same arguments is reused, so its fingerprint and a resumed benchmark stay valid."""
    folder = Path(folder)
    spec = json.dumps(sizes, sort_keys=True)
    marker = folder / SPEC_FILE
    if not (marker.is_file() and marker.read_text() == spec and (folder / "config.json").is_file()):
        build_random_model(**sizes).save_pretrained(folder)
        atomic_write(marker, spec)
    return folder


def random_model_sizes(items: list[str]) -> dict:
    """`SIZE=VALUE` items (`draftedit bench --random-model hidden=256 ...`) -> build_random_model keywords."""
    import inspect

    import yaml

    from components.config import fail

    known = [k for k in inspect.signature(build_random_model).parameters if k != "max_positions"]
    sizes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            fail(f"--random-model {item}", f"expected SIZE=VALUE with SIZE one of {known}")
        sizes[key] = yaml.safe_load(value)
    if "init" in sizes and sizes["init"] not in INITS:
        fail(f"--random-model init={sizes['init']}", f"must be one of {INITS}")
    return sizes


def prepare_random_model(out_dir: str | os.PathLike, sizes: dict) -> tuple[Path, dict]:
    """The random model in `<out_dir>/random_model` and its FP8 checkpoint in `<out_dir>/fp8_model`;
    returns (model folder, the FP8 summary of components.quantize.run_quantize: bytes in and out,
    largest relative weight error), the summary also kept as `<out_dir>/fp8_checkpoint.json`."""
    from components.quantize import QuantizeConfig, run_quantize

    out_dir = Path(out_dir)
    model_dir = save_random_model(out_dir / "random_model", **sizes)
    fp8 = run_quantize(QuantizeConfig(method="fp8"), model_dir, out_dir / "fp8_model")
    atomic_write(out_dir / "fp8_checkpoint.json", json.dumps(fp8, indent=2, default=str) + "\n")
    return model_dir, fp8
