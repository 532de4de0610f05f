"""`draftedit generate`: decode a prompt and watch drafting and editing happen in the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_errors import UsageError, config_errors
from .presets import load_decode_config, preset_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (config.json + *.safetensors [+ tokenizer.json])")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (needs a tokenizer in the model folder)")
    source.add_argument("--prompt-file", type=Path, help="read the prompt text from this UTF-8 file")
    source.add_argument("--ids", help="prompt as comma-separated token ids, e.g. 12,7,99")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--preset", default="quality",
                        help=f"decoding preset name ({', '.join(preset_names())}) or a YAML path")
    parser.add_argument("--threshold", type=float, help="tau_mask in [0, 1]: fill a mask above this confidence")
    parser.add_argument("--editing-threshold", type=float,
                        help="tau_edit >= 0: replace a token above this confidence (above 1 disables editing)")
    parser.add_argument("--gen-length", type=int)
    parser.add_argument("--block-length", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other DecodeConfig field, e.g. --set mbe_window=2 (repeatable)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-live", action="store_true", help="print only the result, no live view")
    parser.add_argument("--save", type=Path, help="save the trajectory as .html (self-contained) or .gif")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.live import Live

    from model import DiffusionLM, generate
    from model.tokenizer import TokenizerError, load_tokenizer

    from . import visualize

    if args.save is not None and args.save.suffix not in (".html", ".gif"):
        raise UsageError(f"--save must end in .html or .gif, got {args.save}")
    fields = {k: v for k, v in dict(threshold=args.threshold, editing_threshold=args.editing_threshold,
                                    gen_length=args.gen_length, block_length=args.block_length).items()
              if v is not None}
    with config_errors(None, list(args.overrides) + [f"{k}={v}" for k, v in fields.items()]):
        cfg = load_decode_config(args.preset, args.overrides, record_trajectory=True, **fields)
    option, text = prompt_text(args)
    lm = DiffusionLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    tokenizer = None
    try:
        tokenizer = load_tokenizer(args.model)
    except (TokenizerError, FileNotFoundError):
        if text is not None:
            raise UsageError(f"{option} needs a tokenizer in {args.model}; pass token ids with --ids instead") from None
    if text is not None:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}]) if args.chat else text
        prompt = tokenizer.encode(text)
    else:
        try:
            prompt = [int(t) for t in args.ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise UsageError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
    if tokenizer is not None:
        cfg.mask_id = cfg.mask_id if cfg.mask_id is not None else tokenizer.mask_id
        cfg.eos_id = cfg.eos_id if cfg.eos_id is not None else tokenizer.eos_id
        decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    else:
        decode = lambda ids: f"{ids[0]} "  # noqa: E731
    check_prompt(lm, prompt, cfg, option)

    console = Console()
    end = len(prompt) + cfg.gen_length
    if args.no_live or not console.is_terminal:
        result = generate(lm, [prompt], cfg)
    else:
        mask_id = cfg.mask_id if cfg.mask_id is not None else lm.config.mask_token_id
        canvas_len = -(-end // cfg.block_length) * cfg.block_length
        frame = visualize.Frame(0, "start", 0, prompt + [mask_id] * (canvas_len - len(prompt)),
                                [visualize.PROMPT] * len(prompt) + [visualize.MASKED] * (canvas_len - len(prompt)))
        with Live(console=console, refresh_per_second=20, transient=False) as live:
            def show(_index, canvas, record):
                visualize.apply_step(frame, record)
                if cfg.levenshtein:  # structural edits move tokens the record does not name
                    visualize.follow_canvas(frame, canvas.tolist(), mask_id)
                live.update(visualize.render_rich(frame, decode, end))
            result = generate(lm, [prompt], cfg, on_step=show)
    output = decode(result.sequences[0]) if tokenizer is not None else " ".join(map(str, result.sequences[0]))
    console.print(output, markup=False, highlight=False)
    console.print(f"[dim]{len(result.sequences[0])} tokens · {result.forwards[0]} forwards · "
                  f"TPF {result.tokens_per_forward:.2f} · {result.edits[0]} edits · "
                  f"{result.num_tokens / max(result.wall_seconds, 1e-9):.1f} tokens/s[/dim]")
    if args.save is not None:
        frames = visualize.replay(result.trajectories[0], end)
        writer = visualize.write_html if args.save.suffix == ".html" else visualize.write_gif
        writer(frames, decode, args.save)
        console.print(f"trajectory saved to {args.save}")
    return 0


def prompt_text(args: argparse.Namespace) -> tuple[str, str | None]:
    """(the option that gave the prompt, its text or None for --ids); empty or non-UTF-8 text is a UsageError."""
    if args.prompt_file is not None:
        option = f"--prompt-file {args.prompt_file}"
        try:
            data = args.prompt_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"{option}: cannot read: {exc.strerror}") from None
        text = _utf8(option, data)
    elif args.prompt is not None:
        option = "--prompt"
        # Python decodes invalid UTF-8 in argv to lone surrogates; getting the bytes back names the bad one.
        text = _utf8(option, args.prompt.encode("utf-8", "surrogateescape"))
    else:
        if not args.ids.replace(",", "").strip():
            raise UsageError("--ids is empty; give at least one token id")
        return "--ids", None
    if not text.strip():
        raise UsageError(f"{option}: the prompt is empty")
    return option, text


def _utf8(option: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def check_prompt(lm, prompt: list[int], cfg, option: str) -> None:
    """The prompt fits the model with room for gen_length, and decoding accepts it; UsageError otherwise."""
    from model.decoding import validate

    block = max(cfg.block_length, 1)
    room = lm.config.max_position_embeddings // block * block - cfg.gen_length
    if len(prompt) > room:
        raise UsageError(
            f"{option}: the prompt is {len(prompt)} tokens, longer than the {room} this model can take "
            f"(max_position_embeddings {lm.config.max_position_embeddings} minus gen_length {cfg.gen_length}, "
            f"in whole blocks of {block}); shorten it or lower --gen-length")
    try:
        validate(lm, [prompt], cfg)
    except ValueError as exc:  # validate only checks the prompt and the decoding settings against the model
        raise UsageError(f"{option}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m components.generate_cli`: the same command as `draftedit generate`."""
    from .cli_errors import component_main

    return component_main("generate", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
