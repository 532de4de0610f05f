"""The RL run's resumable state: `<out_dir>/rl_state.pt`, written atomically every
`checkpoint_every_steps` rollout steps.

It holds everything a continued run needs to take exactly the steps the uninterrupted run would
have taken: the step counter (which also fixes the data position and every rollout/mask seed, all
pure in (seed, step)), the online weights that training changes (all of them; with LoRA the adapters
and the buffers, the frozen base being the model folder's, read again), the optimizer state, the
Polyak average, the torch RNG, the per-step history and the held-out curve, and the time already
spent (so a wall-clock budget and a time-based schedule continue rather than restart). The run's
resolved config is stored too: a state is only continued under the same config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from components.config import to_container
from model.files import atomic_path

STATE_FILE = "rl_state.pt"
# Keys that may differ between the interrupted run and its continuation (a longer budget, a later resume).
_FREE_KEYS = ("max_steps", "max_minutes", "resume", "checkpoint_every_steps", "trainer")


class StateMismatchError(ValueError):
    """The out_dir holds the state of a run with a different config."""


def _comparable(cfg) -> dict:
    data = to_container(cfg)
    return {k: v for k, v in data.items() if k not in _FREE_KEYS}


def changing_weights(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`lm`'s state dict less its frozen parameters (the LoRA base): what a continued run cannot reread."""
    frozen = {name for name, p in lm.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in lm.state_dict().items() if k not in frozen}


def load_weights(lm: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load `changing_weights` back into a network built as the saved one was (its frozen part as loaded)."""
    missing, unexpected = lm.load_state_dict(weights, strict=False)
    frozen = {name for name, p in lm.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise StateMismatchError(f"the saved weights do not fit the network (missing "
                                 f"{sorted(set(missing) - frozen)[:3]}, unexpected {sorted(unexpected)[:3]})")


def save_state(module, path: Path, elapsed_s: float) -> None:
    """Write the module's state to `path` (temporary file + rename: a kill never leaves half a state)."""
    optimizer = module.optimizers()
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps it
    state = {
        "rl_steps": module.rl_steps,
        "lm": changing_weights(module.lm),
        "average": module._average,
        "optimizer": optimizer.state_dict(),
        "history": module.history,
        "eval_curve": module.eval_curve,
        "elapsed_s": elapsed_s,
        "last_eval_seconds": module._last_eval_seconds,
        "torch_rng": torch.get_rng_state(),
        "config": _comparable(module.cfg),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, cfg) -> dict[str, Any] | None:
    """The saved state at `path` (None when there is none); StateMismatchError when its config differs."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved, current = state["config"], _comparable(cfg)
    if saved != current:
        keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise StateMismatchError(
            f"{path} is the state of an RL run with a different config (differs in {', '.join(keys)}); "
            f"use a new output folder, delete the state, or set rl.resume=false")
    return state
