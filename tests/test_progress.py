"""The plain log lines a run prints in logs and CI."""

from __future__ import annotations

from samora_kit.train import progress


def test_a_resumed_runs_log_line_counts_only_the_steps_it_made(monkeypatch, capsys):
    clock = iter([100.0, 110.0])  # started at 100 s, logs at 110 s
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    line = progress.TrainingProgress(total_steps=1000, start_step=900, log_every=10)
    line.update(920, 3, {"loss": 0.5})
    assert "(2.00 steps/s)" in capsys.readouterr().out  # 20 steps in 10 s, not 920


def test_tensorboard_reads_the_event_file_and_a_resume_drops_the_steps_past_it(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = progress.MetricsLog(tmp_path, resume_step=0)
    for step in (1, 2, 3):
        first.write(step, {"loss": 1.0 / step, "epoch": 0})
    first.close()
    resumed = progress.MetricsLog(tmp_path, resume_step=2)  # killed after step 3, resumed from step 2's state
    resumed.write(3, {"loss": 0.25, "epoch": 0})
    resumed.write(4, {"loss": 0.2, "epoch": 1})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/epoch"} <= set(events.Tags()["scalars"])
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 0.25),
                                                                                   (4, 0.2)]
    assert [line.count('"step"') for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1] * 4
