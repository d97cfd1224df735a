"""SliceDataset: shapes, resizing and augmentation that depends only on (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader

from samora_kit.data.slices import UNLABELLED, AugmentConfig, SliceDataset, slice_to_model_input
from samora_kit.data.volume import Volume
from samora_kit.errors import DataError

SIZE = 32
STRONG = AugmentConfig(rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0)  # every transform fires


def disc_volume(case_id: str = "disc", slices: int = 4, shape=(24, 30), empty_slices=(0,)) -> Volume:
    """A bright disc labelled 1 inside a ring labelled 2, on a dim gradient; some slices left empty."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - h / 2, xx - w / 2)
    image = np.broadcast_to(0.2 * xx / w, (slices, h, w)).astype(np.float32).copy()  # Z, H, W
    label = np.zeros((slices, h, w), np.int64)
    for z in range(slices):
        if z in empty_slices:
            continue
        label[z][radius < 8] = 2
        label[z][radius < 5] = 1
        image[z][radius < 8] = 0.9
    return Volume(case_id, image, label)


def as_list(dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


def same_items(a, b) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_one_item_per_slice_with_model_shapes_and_ranges():
    dataset = SliceDataset([disc_volume("a", 4), disc_volume("b", 3)], SIZE, AugmentConfig(), seed=0)
    assert len(dataset) == 7
    for image, label in as_list(dataset):
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # grey as RGB
        assert label.shape == (SIZE, SIZE) and label.dtype == torch.int64
        assert set(label.unique().tolist()) <= {0, 1, 2}


def test_augmentation_is_identical_for_same_seed_epoch_index():
    volumes = [disc_volume("a"), disc_volume("b", shape=(40, 36))]
    first = SliceDataset(volumes, SIZE, STRONG, seed=11)
    first.set_epoch(3)
    second = SliceDataset(volumes, SIZE, STRONG, seed=11)  # as another process would build it
    second.set_epoch(3)
    order = list(reversed(range(len(second))))  # access order must not matter
    from_second = {i: second[i] for i in order}
    assert same_items(as_list(first), [from_second[i] for i in range(len(second))])


def test_augmentation_matches_across_worker_processes():
    dataset = SliceDataset([disc_volume("a", 6)], SIZE, STRONG, seed=5)
    dataset.set_epoch(2)
    in_process = as_list(dataset)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=2)
    assert same_items(in_process, list(loader))


def test_augmentation_changes_with_epoch_and_seed():
    volumes = [disc_volume("a")]
    baseline = as_list(SliceDataset(volumes, SIZE, STRONG, seed=1))
    next_epoch = SliceDataset(volumes, SIZE, STRONG, seed=1)
    next_epoch.set_epoch(1)
    other_seed = SliceDataset(volumes, SIZE, STRONG, seed=2)
    for changed in (as_list(next_epoch), as_list(other_seed)):
        assert all(not torch.equal(a[0], b[0]) for a, b in zip(baseline, changed))


def test_augmentation_moves_image_and_label_together():
    dataset = SliceDataset([disc_volume("a", empty_slices=())], SIZE, AugmentConfig(
        rotate_prob=0.0, scale_prob=1.0, scale_range=(1.3, 1.3), elastic_prob=0.0), seed=0)
    plain = SliceDataset([disc_volume("a", empty_slices=())], SIZE, None)
    image, label = dataset[0]
    assert (label > 0).sum() > (plain[0][1] > 0).sum()  # zoomed in: the disc grows
    assert image[0][label == 1].min() > 0.8  # the bright disc still sits under label 1


def test_without_augmentation_items_equal_slice_to_model_input():
    volume = disc_volume("a")
    for augment in (None, AugmentConfig(enabled=False)):
        dataset = SliceDataset([volume], SIZE, augment, seed=0)
        for z in range(volume.image.shape[0]):
            assert torch.equal(dataset[z][0], slice_to_model_input(volume.image[z], SIZE))


def test_foreground_only_keeps_labelled_slices():
    dataset = SliceDataset([disc_volume("a", 4, empty_slices=(0, 2))], SIZE, None, foreground_only=True)
    assert len(dataset) == 2 and all(label.any() for _, label in as_list(dataset))


def test_label_resize_is_nearest_neighbour():
    _, label = SliceDataset([disc_volume("a")], 100, None)[1]
    assert set(label.unique().tolist()) == {0, 1, 2}  # no blended in-between classes


def test_image_stays_in_unit_range_after_bicubic():
    checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)  # sharp edges overshoot under bicubic
    resized = slice_to_model_input(checker, 57)
    assert resized.shape == (3, 57, 57) and resized.min() == 0.0 and resized.max() == 1.0


def test_unlabelled_volume_gives_ignore_label_and_refuses_foreground_only():
    volume = Volume("u", np.zeros((2, 10, 10), np.float32))
    _, label = SliceDataset([volume], SIZE, AugmentConfig(), seed=0)[0]
    assert (label == UNLABELLED).all()
    with pytest.raises(DataError, match="foreground_only needs a label map"):
        SliceDataset([volume], SIZE, None, foreground_only=True)


def test_augment_config_rejects_bad_ranges():
    with pytest.raises(ValidationError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValidationError, match="rotate_prob"):
        AugmentConfig(rotate_prob=1.5)
    with pytest.raises(ValidationError, match="elastic_sigma"):
        AugmentConfig(elastic_sigma=3.0)  # unknown keys are errors
