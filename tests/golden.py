"""Locate the golden fixtures recorded from the authors' reference code (shared/golden beside the repo)."""

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("DRAFTEDIT_GOLDEN", REPO.parent / "shared" / "golden"))
PUBLIC = GOLDEN / "public"

# The reference generate() arguments that DecodeConfig shares (steps/minimal_topk are unused there).
DECODE_KEYS = ["block_length", "gen_length", "threshold", "editing_threshold", "max_post_steps",
               "num_to_transfer", "eos_early_stop", "eos_id", "mask_id", "temperature", "top_k", "top_p"]


def require_golden() -> Path:
    if not (PUBLIC / "cases.json").is_file():
        raise FileNotFoundError(
            f"golden fixtures not found at {PUBLIC}; set DRAFTEDIT_GOLDEN to the shared/golden folder")
    return PUBLIC


def load_cases() -> list[dict]:
    return json.loads((require_golden() / "cases.json").read_text())["cases"]


def decode_kwargs(case: dict) -> dict:
    return {k: case["params"][k] for k in DECODE_KEYS}
