"""Live progress of long stages (training, RL) in the terminal: step, loss or reward, rate and ETA.

On a terminal one line is rewritten in place (at most twice a second); when the output is a file or
CI log, a line is printed only at every tenth of the run, so a log holds about ten lines a stage.
Set DRAFTEDIT_PROGRESS=0 to silence it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import lightning as L


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ConsoleProgress(L.Callback):
    """Reports after every optimizer step of `label`, of `total_steps` (or until `deadline`,
    a `time.monotonic()` value, whichever comes first). `read(trainer, module)` gives the figures
    to show, e.g. {"loss": 0.41}; `step(trainer, module)` the current step (default: global_step)."""

    def __init__(self, label: str, total_steps: int, read: Callable[..., dict[str, float]],
                 step: Callable[..., int] | None = None, deadline: float | None = None, stream=None):
        self.label, self.total, self.read, self.deadline = label, max(1, total_steps), read, deadline
        self.step_of = step or (lambda trainer, module: trainer.global_step)
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.enabled = os.environ.get("DRAFTEDIT_PROGRESS", "1") != "0"
        self._start = self._last_print = 0.0
        self._next_tenth = 1
        self._shown = False
        self._figures: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def fraction(self, step: int, now: float) -> float:
        """How far the run is: by steps, or by the wall-clock budget when that ends it sooner."""
        done = step / self.total
        if self.deadline is not None and self.deadline > self._start:
            done = max(done, (now - self._start) / (self.deadline - self._start))
        return min(1.0, done)

    def line(self, step: int, now: float) -> str:
        elapsed = now - self._start
        done = self.fraction(step, now)
        eta = elapsed * (1 - done) / done if done > 0 else float("nan")
        figures = "  ".join(f"{k} {v:.4g}" for k, v in self.read_figures().items())
        rate = step / elapsed if elapsed > 0 else 0.0
        eta_text = _duration(eta) if eta == eta else "?"
        by_clock = self.deadline is not None and done > step / self.total  # the budget, not the steps, ends it
        steps = f"step {step}" if by_clock else f"step {step}/{self.total}"
        return (f"[{self.label}] {steps} ({100 * done:3.0f}%)  {figures}  "
                f"{rate:.2f} steps/s  elapsed {_duration(elapsed)}  ETA {eta_text}")

    def read_figures(self) -> dict[str, float]:
        try:
            return {k: float(v) for k, v in self._figures.items()}
        except (TypeError, ValueError):
            return {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        now = time.monotonic()
        step = int(self.step_of(trainer, pl_module))
        self._figures = self.read(trainer, pl_module)
        if self.live:
            if now - self._last_print >= 0.5:
                self.stream.write("\r" + self.line(step, now) + "\033[K")
                self.stream.flush()
                self._last_print, self._shown = now, True
            return
        tenth = int(10 * self.fraction(step, now))
        if tenth >= self._next_tenth:
            self._next_tenth = tenth + 1
            # write(), not print(): Prefect flows with log_prints turn print() into log records
            self.stream.write(self.line(step, now) + "\n")
            self.stream.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.enabled and self.live and self._shown and trainer.is_global_zero:
            self.stream.write("\n")
            self.stream.flush()
