"""The plain log lines a run prints in logs and CI."""

from __future__ import annotations

from samora_kit.train import progress


def test_a_resumed_runs_log_line_counts_only_the_steps_it_made(monkeypatch, capsys):
    clock = iter([100.0, 110.0])  # started at 100 s, logs at 110 s
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    line = progress.TrainingProgress(total_steps=1000, start_step=900, log_every=10)
    line.update(920, 3, {"loss": 0.5})
    assert "(2.00 steps/s)" in capsys.readouterr().out  # 20 steps in 10 s, not 920
