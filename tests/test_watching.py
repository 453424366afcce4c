"""What people watch: the progress bar (a terminal) or lines (anything else), and the plots' numbers.

The whole path — a real run killed and resumed, its TensorBoard events read back with TensorBoard's
EventAccumulator, its progress lines and PNGs — is in test_resume.py; these check the parts alone, quickly.
"""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest

from recipetune_plugins.plots import epoch_of, loss_per_epoch, write_plots
from recipetune_plugins.progress import progress_callback, style
from recipetune_plugins.step_metrics import mean_train_loss
from recipetune_plugins.tensorboard_reporter import scalar_tag


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(callback, steps=4, start=0):
    args = SimpleNamespace(logging_strategy="steps", logging_steps=1)
    state = SimpleNamespace(max_steps=steps, global_step=start)
    control = SimpleNamespace()
    callback.on_train_begin(args, state, control)
    for step in range(start + 1, steps + 1):
        state.global_step = step
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": 2.0 / step, "tokens_per_second": 1234.5})
        if step == 2:
            callback.on_log(args, state, control, logs={"eval_loss": 1.5})
    callback.on_train_end(args, state, control)


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    monkeypatch.delenv("RECIPETUNE_PROGRESS", raising=False)
    assert style(Terminal()) == "bar" and style(io.StringIO()) == "lines"
    terminal = Terminal()
    drive(progress_callback(terminal), start=1)  # a resumed run: the bar starts at the checkpoint's step
    text = terminal.getvalue()
    assert "\r" in text and "4/4" in text and "loss=0.5000" in text and "tok/s=1,234" in text
    assert "eval at step 2: eval_loss 1.5000" in text

    plain = io.StringIO()
    drive(progress_callback(plain, every_s=3600))
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue()
    # the first step, the last one, and (every hour) nothing between; each with the loss of its own step
    assert [re.sub(r"elapsed \S+ · ETA \S+", "T", line) for line in lines] == [
        "train step 1/4 (25%) · loss 2.0000 · 1,234 tok/s · T", "eval at step 2: eval_loss 1.5000",
        "train step 4/4 (100%) · loss 0.5000 · 1,234 tok/s · T"]


def test_loss_per_epoch_and_the_whole_runs_mean_loss(tmp_path):
    assert [epoch_of(e) for e in (0.25, 1.0, 1.0000001, 2.0, 2.5)] == [1, 1, 2, 2, 3]
    metrics = [{"step": s, "epoch": s / 2, "loss": float(s), "learning_rate": 1e-3 / s, "host_rss_gib": 0.5}
               for s in range(1, 7)]
    metrics.insert(2, {"step": 2, "epoch": 1.0, "eval_loss": 9.0})
    assert loss_per_epoch(metrics) == {"train": {1: 1.5, 2: 3.5, 3: 5.5}, "eval": {1: 9.0}}
    assert mean_train_loss(metrics) == pytest.approx(3.5)
    # a line every 2 steps weighs 2 steps
    assert mean_train_loss([{"step": 2, "loss": 1.0}, {"step": 4, "loss": 3.0}, {"step": 5, "loss": 6.0}]) == pytest.approx(14 / 5)
    run = SimpleNamespace(output_dir=tmp_path, read_metrics=lambda: metrics)
    assert sorted(p.name for p in write_plots(run)) == ["learning_rate.png", "loss_per_epoch.png", "memory_per_step.png"]
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("learning_rate.png", "loss_per_epoch.png"))


def test_tensorboard_tags():
    assert [scalar_tag(k) for k in ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second",
                                    "memory_reserved_gib", "host_rss_gib", "train_runtime", "eval_runtime")] == [
        "train/loss", "eval/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
        "memory/memory_reserved_gib", "memory/host_rss_gib", None, None]
