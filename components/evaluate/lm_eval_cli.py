"""`draftedit-lm-eval ARGS`: lm-evaluation-harness's own command line, with the `draftedit` model registered.

    draftedit-lm-eval --model draftedit --model_args pretrained=outputs/sft,preset=speedy --tasks arc_easy
    draftedit-lm-eval --model draftedit --model_args pretrained=runs:/<run_id>/checkpoint,mc_samples=16 \\
        --tasks my_task --include_path path/to/task_yamls --limit 50 --batch_size 8 --seed 0

lm-eval 0.4 has no plugin discovery for model classes: `--model draftedit` resolves only once
components.evaluate.lm_eval_model is imported. This command imports it and then runs `lm_eval` with ARGS
unchanged, so every lm-eval option and subcommand (`draftedit-lm-eval ls tasks`, `run --help`)
works as documented by lm-eval. It is a console script of its own rather than a `draftedit`
subcommand because lm-eval must see its arguments raw, not parsed by our command line first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run lm-eval; a bad model arg, preset, checkpoint or URI is one error line (exit 2), not a traceback."""
    from lm_eval.__main__ import cli_evaluate

    from components.config import ConfigError
    from components.evaluate.lm_eval_model import ModelArgsError  # registers --model draftedit
    from components.tracking.store import TrackingError
    from model.checkpoint import CheckpointError
    from model.tokenizer import TokenizerError

    saved = sys.argv
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except (ModelArgsError, ConfigError, TrackingError, CheckpointError, TokenizerError, FileNotFoundError) as exc:
        print(f"draftedit-lm-eval: error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
