"""What keeps a GPU busy, checked on the CPU: the loop reads the device only at log and checkpoint
steps, one loader serves the whole run in today's exact order (workers included), a non-finite loss
still stops the run before anything non-finite is saved, and a compiled step agrees with an eager one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from samora_kit.data.slices import SliceDataset
from samora_kit.errors import TrainingDiverged
from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.train.distributed import DistContext
from samora_kit.train.loader import RunBatches, epoch_order, run_loader
from samora_kit.train.loop import train
from samora_kit.train.losses import DiceCELoss
from samora_kit.train.model import SegmentationObjective, build_dataset, build_model
from samora_kit.weights.io import load_weights

from .synthetic import tiny_recipe, write_decathlon


@pytest.fixture
def setup(tmp_path):
    """(recipe, objective, dataset) of the tiny SAMed on 16 synthetic slices: 4 steps per epoch."""
    def make(**train_cfg):
        data = tmp_path / "data"
        if not data.exists():
            write_decathlon(data, n_cases=4)
        path = tmp_path / "recipe.toml"
        path.write_text(tiny_recipe(data, tmp_path / "run", ["case_000", "case_001"], ["case_002"], **train_cfg))
        registry = default_registry()
        recipe = load_recipe(path, registry)
        adapter = build_dataset(recipe, registry)
        torch.manual_seed(0)
        model = build_model(recipe, registry, adapter.num_classes)
        dataset = SliceDataset([adapter.load_case(c) for c in adapter.cases("train")], 64, recipe.train.augment, 7)
        return recipe, SegmentationObjective(model, DiceCELoss(adapter.num_classes)), dataset
    return make


class SyncCounter:
    """Counts the reads that make a host wait for the device (.item(), float(), int(), bool(), .tolist()) made by
    the kit's training code: the loop, the objective, the model. Reads inside the data pipeline (CPU
    tensors in the loader, augmentation) cost a GPU nothing and are not counted."""

    REPO = str(Path(__file__).resolve().parents[1])
    DATA = ("/samora_kit/data/", "/samora_kit/train/loader.py")

    def __init__(self, monkeypatch):
        self.where: list[str] = []
        for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    @property
    def count(self) -> int:
        return len(self.where)

    def _counting(self, original):
        def read(tensor, *args):
            caller = self._first_caller_outside_libraries()
            if caller and caller.startswith(self.REPO) and not any(d in caller for d in self.DATA):
                self.where.append(caller)
            return original(tensor, *args)
        return read

    # torch code that reads host-side tensors only: the loader's collation, the optimizer's step counters
    HOST_SIDE = ("/torch/utils/data/", "/torch/optim/")

    @classmethod
    def _first_caller_outside_libraries(cls) -> str | None:
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if any(part in name for part in cls.HOST_SIDE):
                return None
            if "site-packages" not in name and "/torch/" not in name and not name.endswith("test_loop_speed.py"):
                return f"{name}:{frame.f_lineno}"
            frame = frame.f_back
        return None


@pytest.mark.parametrize("epochs", [2, 4])
def test_the_loop_reads_the_device_only_at_log_and_checkpoint_steps(setup, tmp_path, monkeypatch, epochs):
    recipe, objective, dataset = setup(epochs=epochs, log_every=100, checkpoint_every=100)
    counter = SyncCounter(monkeypatch)
    result = train(objective, dataset, recipe.train, 7, tmp_path / "run", DistContext(), show_progress=False)
    assert result.steps == 4 * epochs
    # two log lines (the first step's and the last's, which is also the checkpoint): the divergence flag
    # (step and loss) and the metrics (one transfer) at each, then the final loss: 7 reads, the same for
    # 8 steps as for 16, so nothing is read per step
    assert counter.count == 7, counter.where


def test_a_nan_is_caught_at_the_next_checkpoint_step_before_anything_is_saved(setup, tmp_path, monkeypatch):
    recipe, objective, dataset = setup(epochs=2, log_every=100, checkpoint_every=4)
    calls = {"n": 0}
    forward = objective.model.decoder.forward

    def poisoned(embedding):
        calls["n"] += 1
        out = forward(embedding)
        return out * float("nan") if calls["n"] == 6 else out  # step 5 (0-based), between checkpoints 4 and 8

    monkeypatch.setattr(objective.model.decoder, "forward", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5; .* the last good state is .*last"):
        train(objective, dataset, recipe.train, 7, run_dir, DistContext(), show_progress=False)
    state, header = load_weights(run_dir / "checkpoints" / "last.safetensors")
    assert header["step"] == 4  # the step-8 save never happened: the check comes first
    assert all(torch.isfinite(t).all() for t in state.values())


def test_one_loader_walks_every_epoch_in_the_seeded_order_and_resumes_mid_epoch():
    n, global_batch, steps_per_epoch = 10, 4, 2  # the last 2 items of each epoch's order are dropped
    whole = list(RunBatches(n, 3, 0, 6, steps_per_epoch, global_batch, global_batch, 0))
    for step, batch in enumerate(whole):
        epoch, position = divmod(step, steps_per_epoch)
        expected = epoch_order(3, epoch, n)[position * 4:(position + 1) * 4].tolist()
        assert batch == [(epoch, i) for i in expected]
    assert list(RunBatches(n, 3, 3, 6, steps_per_epoch, global_batch, global_batch, 0)) == whole[3:]
    ranks = [list(RunBatches(n, 3, 0, 6, steps_per_epoch, global_batch, 2, r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == whole  # two ranks share each global batch


def test_workers_give_the_batches_of_the_main_process_with_each_epochs_augmentation(setup):
    recipe, _, dataset = setup()
    sampler = RunBatches(len(dataset), 7, 2, 8, 4, 4, 4, 0)  # from mid-epoch 0 into epoch 1
    plain = list(run_loader(dataset, sampler, 7, 0, torch.device("cpu")))
    workers = list(run_loader(dataset, sampler, 7, 2, torch.device("cpu")))
    assert len(plain) == len(workers) == 6
    for a, b in zip(plain, workers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    dataset.set_epoch(1)  # epoch 1's draw of the step-4 batch, read directly
    first_of_epoch_1 = [dataset[i] for _, i in list(sampler)[2]]
    torch.testing.assert_close(plain[2][0], torch.stack([image for image, _ in first_of_epoch_1]))


def test_a_compiled_step_trains_like_an_eager_one(setup, tmp_path):
    pytest.importorskip("torch._inductor")
    weights = {}
    for compiled in (False, True):
        recipe, objective, dataset = setup(epochs=1, log_every=1, checkpoint_every=100)
        result = train(objective, dataset, recipe.train, 7, tmp_path / f"run-{compiled}", DistContext(),
                       show_progress=False, compile_model=compiled)
        assert result.steps == 4 and torch.isfinite(torch.tensor(result.final_loss))
        weights[compiled] = {n: p.detach().clone() for n, p in objective.named_parameters() if p.requires_grad}
    for name, eager in weights[False].items():
        torch.testing.assert_close(weights[True][name], eager, atol=2e-4, rtol=1e-3, msg=name)
