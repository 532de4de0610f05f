"""Show a draft-and-edit trajectory to people: terminal frames, a self-contained HTML page, a GIF.

Every view replays the recorded steps over the initial canvas, so each frame shows which positions
are still masked, which were drafted (mask → token) and which were edited (token → token).
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from model import StepRecord, Trajectory
from model.files import atomic_path, atomic_write
from model.levenshtein import StructuralRecord, apply_block_edits

MASKED, PROMPT, DRAFTED, EDITED = "masked", "prompt", "drafted", "edited"
COLORS = {MASKED: "#9aa0a6", PROMPT: "#5f6368", DRAFTED: "#1a73e8", EDITED: "#d93025"}


@dataclass
class Frame:
    """The canvas after one step: per position its token id and how it got there."""
    step: int
    kind: str
    block: int
    tokens: list[int]
    states: list[str]


def apply_step(frame: Frame, step: StepRecord, structural: StructuralRecord | None = None,
               mask_id: int | None = None) -> None:
    """Advance a frame in place by one recorded step, then by its structural edits (Levenshtein
    editing, `Trajectory.structural`; `mask_id` fills the slots they open): moved tokens keep their
    states, the new slots are masked."""
    for pos, tok in step.m2t:
        frame.tokens[pos], frame.states[pos] = tok, DRAFTED
    for pos, _, new in step.t2t:
        frame.tokens[pos], frame.states[pos] = new, EDITED
    if structural is not None:
        lo, m = structural.start, len(structural.before)
        delete, insert = torch.zeros(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)
        delete[list(structural.deleted)] = True
        insert[list(structural.inserted)] = True
        moved = apply_block_edits(torch.tensor(frame.tokens[lo:lo + m]), delete, insert, mask_id=mask_id)
        states = frame.states[lo:lo + m]
        frame.states[lo:lo + m] = [states[src] if src >= 0 else MASKED for src in moved.source.tolist()]
        frame.tokens[lo:lo + m] = moved.tokens.tolist()
    frame.step, frame.kind, frame.block = frame.step + 1, step.kind, step.block


def follow_canvas(frame: Frame, canvas: list[int], mask_id: int) -> None:
    """Make a live frame show `canvas` where it differs from it. A live view (the decoder's on_step) sees
    each step record, not its structural edits; the canvas shows what they moved: moved tokens are
    marked edited, the slots they opened masked."""
    for pos, tok in enumerate(canvas):
        if frame.tokens[pos] != tok:
            frame.tokens[pos], frame.states[pos] = tok, MASKED if tok == mask_id else EDITED


def replay(traj: Trajectory, end: int | None = None) -> list[Frame]:
    """Frames from the initial canvas through every step (trimmed to `end` positions if given)."""
    tokens = list(traj.initial_canvas)
    states = [PROMPT if i < traj.prompt_length else MASKED for i in range(len(tokens))]
    frame = Frame(0, "start", traj.prompt_length // traj.block_length, tokens, states)
    frames = [Frame(0, "start", frame.block, list(tokens), list(states))]
    for i, step in enumerate(traj.steps):
        apply_step(frame, step, traj.structural.get(i), traj.mask_id)
        frames.append(Frame(frame.step, frame.kind, frame.block, list(frame.tokens), list(frame.states)))
    if end is not None:
        for f in frames:
            f.tokens, f.states = f.tokens[:end], f.states[:end]
    return frames


def token_pieces(frame: Frame, decode: Callable[[list[int]], str], mask_glyph: str = "░",
                 end: int | None = None) -> list[tuple[str, str]]:
    """(text, state) per position up to `end`, the mask shown as a glyph."""
    pairs = list(zip(frame.tokens, frame.states))[:end]
    return [(mask_glyph if state == MASKED else decode([tok]), state) for tok, state in pairs]


def render_rich(frame: Frame, decode: Callable[[list[int]], str], end: int | None = None):
    """A `rich.text.Text` for the terminal: grey masks, blue drafts, red edits."""
    from rich.text import Text
    style = {MASKED: "dim", PROMPT: "bold", DRAFTED: "cyan", EDITED: "bold red"}
    text = Text()
    for piece, state in token_pieces(frame, decode, end=end):
        text.append(piece, style=style[state])
    text.append(f"\n[step {frame.step} · {frame.kind} · block {frame.block}]", style="dim")
    return text


def write_html(frames: list[Frame], decode: Callable[[list[int]], str], path: str | os.PathLike,
               title: str = "draftedit trajectory") -> Path:
    """A single HTML file (no external assets) with a slider and play button over the frames."""
    data = [{"step": f.step, "kind": f.kind, "block": f.block,
             "pieces": token_pieces(f, decode)} for f in frames]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: ui-monospace, monospace; margin: 2em; }}
#canvas span {{ white-space: pre-wrap; }}
.masked {{ color: {COLORS[MASKED]}; }} .prompt {{ color: {COLORS[PROMPT]}; font-weight: bold; }}
.drafted {{ color: {COLORS[DRAFTED]}; }} .edited {{ color: {COLORS[EDITED]}; font-weight: bold; }}
</style></head><body>
<h3>{html.escape(title)}</h3>
<p><span class="prompt">prompt</span> · <span class="masked">░ masked</span> ·
<span class="drafted">drafted (mask→token)</span> · <span class="edited">edited (token→token)</span></p>
<button id="play">play</button> <input id="slider" type="range" min="0" max="{len(frames) - 1}" value="0">
<span id="info"></span>
<div id="canvas"></div>
<script>
const frames = {json.dumps(data)};
const slider = document.getElementById('slider');
function show(i) {{
  const f = frames[i];
  const div = document.getElementById('canvas');
  div.innerHTML = '';
  for (const [text, state] of f.pieces) {{
    const s = document.createElement('span'); s.className = state; s.textContent = text; div.appendChild(s);
  }}
  document.getElementById('info').textContent = `step ${{f.step}} · ${{f.kind}} · block ${{f.block}}`;
}}
slider.oninput = () => show(+slider.value);
document.getElementById('play').onclick = () => {{
  let i = 0; const t = setInterval(() => {{ slider.value = i; show(i); if (++i >= frames.length) clearInterval(t); }}, 250);
}};
show(frames.length - 1);
</script></body></html>
"""
    return atomic_write(path, page)  # UTF-8, 0644: the page is meant to be shared


def write_gif(frames: list[Frame], decode: Callable[[list[int]], str], path: str | os.PathLike,
              width: int = 900, ms_per_frame: int = 250) -> Path:
    """An animated GIF of the frames, wrapped text, colours as in the HTML view."""
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default()
    line_height, margin = 16, 10
    images = []
    for frame in frames:
        pieces = token_pieces(frame, decode, mask_glyph="#")
        # Lay the pieces out line by line to know the height first.
        layout, x, y = [], margin, margin
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        for text, state in pieces:
            text = text.replace("\n", "⏎")
            w = probe.textlength(text, font=font)
            if x + w > width - margin:
                x, y = margin, y + line_height
            layout.append((x, y, text, state))
            x += w
        height = y + 2 * line_height + margin
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        for x, y, text, state in layout:
            draw.text((x, y), text, fill=COLORS[state], font=font)
        draw.text((margin, height - line_height - margin // 2),
                  f"step {frame.step} - {frame.kind} - block {frame.block}", fill="black", font=font)
        images.append(img)
    height = max(im.height for im in images)
    images = [_pad_height(im, height) for im in images]
    path = Path(path)
    with atomic_path(path) as tmp:  # 0644: the GIF is meant to be shared
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    return path


def _pad_height(img, height):
    from PIL import Image
    if img.height == height:
        return img
    canvas = Image.new("RGB", (img.width, height), "white")
    canvas.paste(img, (0, 0))
    return canvas
