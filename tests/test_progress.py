"""Progress lines of long stages (components.progress): about ten lines in a log, one rewritten line on
a terminal, the clock's fraction for a time-budgeted run."""

from __future__ import annotations

import io


class _Trainer:
    is_global_zero = True
    global_step = 0


def test_progress_in_a_log_prints_about_ten_lines_with_step_figures_and_eta():
    from components.progress import ConsoleProgress

    stream = io.StringIO()  # not a terminal
    progress = ConsoleProgress("sft", 200, read=lambda t, m: {"loss": 0.5}, stream=stream)
    trainer = _Trainer()
    progress.on_train_start(trainer, None)
    for step in range(1, 201):
        trainer.global_step = step
        progress.on_train_batch_end(trainer, None, None, None, step)
    lines = stream.getvalue().splitlines()
    assert 9 <= len(lines) <= 11
    assert lines[0].startswith("[sft] step 20/200") and "loss 0.5" in lines[0] and "ETA" in lines[0]
    assert "(100%)" in lines[-1]


def test_progress_on_a_terminal_rewrites_one_line():
    from components.progress import ConsoleProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = ConsoleProgress("rl", 10, read=lambda t, m: {"reward": 0.9}, stream=stream)
    trainer = _Trainer()
    progress.on_train_start(trainer, None)
    trainer.global_step = 1
    progress.on_train_batch_end(trainer, None, None, None, 0)
    progress.on_train_end(trainer, None)
    text = stream.getvalue()
    assert text.startswith("\r[rl] step 1/10") and text.endswith("\n") and text.count("\n") == 1


def test_progress_of_a_time_budgeted_run_shows_the_clock_fraction():
    import time as _time

    from components.progress import ConsoleProgress

    progress = ConsoleProgress("rl", 100000, read=lambda t, m: {}, stream=io.StringIO())
    now = _time.monotonic()
    progress._start, progress.deadline = now - 30.0, now + 30.0  # half the wall-clock budget is spent
    text = progress.line(5, now)
    assert text.startswith("[rl] step 5 ( 50%)") and "/100000" not in text
