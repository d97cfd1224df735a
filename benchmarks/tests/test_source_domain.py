"""The miniature world's source domain (issue 11): generated scenes and Kvasir-SEG as instance and
unlabelled sources, and the recipe that MAE-pre-trains a tiny SAM encoder on the scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from samora_kit.cli import main
from samora_kit.errors import DataError
from samora_kit.interfaces import DatasetAdapter, EpochAware, UnlabelledSource
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.runner import run
from samora_kit.weights.io import read_header
from samora_benchmarks.datasets.instances import InstanceSource, min_pixels
from samora_benchmarks.datasets.scenes import draw_scene, render

from tests.conftest import shared_dataset

REPO = Path(__file__).resolve().parents[2]
S = 64


@pytest.fixture(scope="module")
def registry():
    """The world's datasets (this package's plugin) beside the built-in ones, nothing else installed."""
    import samora_benchmarks.datasets as world_datasets
    import samora_kit_plugins.datasets as builtin_datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DISABLE_AUTOLOAD, "1")
        loaded = load_plugins(extra=[builtin_datasets, world_datasets])
    assert not loaded.failures
    return loaded.registry


def scenes(registry, **config):
    return registry.get("dataset", "scenes").build({"num_images": 12, "image_size": S, **config})


@pytest.fixture
def kvasir(registry):
    root = shared_dataset("kvasir_seg")
    return registry.get("dataset", "kvasir_seg").build({"root": str(root)})


# ---- scenes --------------------------------------------------------------------------------------

def test_scenes_are_a_pure_function_of_seed_and_index(registry):
    first, again = scenes(registry).instance_dataset(S), scenes(registry).instance_dataset(S)
    image, masks = first[3]
    assert torch.equal(image, again[3][0]) and torch.equal(masks, again[3][1])
    assert not torch.equal(image, first[4][0])
    assert not torch.equal(image, scenes(registry, seed=1).instance_dataset(S)[3][0])


def test_scene_instances_are_visible_regions_disjoint_non_empty_and_at_least_min_area(registry):
    source = scenes(registry, min_area=0.004)
    counts = []
    for image, masks in source.instance_dataset(S):
        assert image.shape == (3, S, S) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert masks.dtype == torch.bool and masks.ndim == 3 and masks.shape[1:] == (S, S) and len(masks) >= 1
        assert masks.sum(0).max() <= 1  # occlusion leaves each pixel to at most one instance
        assert masks.flatten(1).sum(1).min() >= min_pixels(0.004, S)
        counts.append(len(masks))
    assert np.mean(counts) >= 5  # "segment everything": many instances per image


def test_a_scene_shows_the_same_shapes_at_every_size(registry):
    config = registry.get("dataset", "scenes").config_model.model_validate({"seed": 7})
    scene = draw_scene(np.random.default_rng([7, 0, 0]), config)
    _, small = render(scene, S)
    _, large = render(scene, 2 * S)
    assert (large[1::2, 1::2] == small).mean() > 0.9  # pixel centres nearly coincide: labels agree
    assert len(np.unique(small)) > 3


def test_a_min_area_no_shape_can_reach_is_a_clear_error(registry):
    with pytest.raises(DataError, match="below min_area = 0.9"):
        scenes(registry, min_area=0.9, shape_size=(0.05, 0.1)).instance_dataset(S)[0]


def test_scene_config_rejects_reversed_ranges(registry):
    model = registry.get("dataset", "scenes").config_model
    with pytest.raises(ValidationError, match="shapes_per_image"):
        model.model_validate({"shapes_per_image": (8, 2)})
    with pytest.raises(ValidationError, match="shape_size"):
        model.model_validate({"shape_size": (0.0, 0.2)})


def test_scenes_are_an_unlabelled_source_of_rgb_images_for_pretraining(registry):
    source = scenes(registry)
    assert isinstance(source, DatasetAdapter) and isinstance(source, UnlabelledSource)
    assert isinstance(source, InstanceSource)
    images = source.slice_dataset(S)
    assert isinstance(images, EpochAware) and len(images) == 12 == len(source.cases("train"))
    image = images[5]
    assert image.shape == (3, S, S) and 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image, source.instance_dataset(S)[5][0])
    assert not torch.equal(image[0], image[1])  # colour, not grey repeated
    volume = source.load_case(source.cases("train")[5])
    assert volume.image.shape == (1, S, S) and volume.label is None


# ---- Kvasir-SEG ----------------------------------------------------------------------------------

def test_kvasir_reads_a_real_image_and_its_binarised_mask_in_place(kvasir):
    assert isinstance(kvasir, InstanceSource) and isinstance(kvasir, UnlabelledSource)
    assert len(kvasir.cases("train")) == 1000 and kvasir.class_names == ["polyp"]
    case = kvasir.cases("train")[0]
    volume = kvasir.load_case(case)
    with Image.open(kvasir.image_path(case)) as picture:
        width, height = picture.size
    assert volume.image.shape == volume.label.shape == (1, height, width)
    assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    assert set(np.unique(volume.label)) == {0, 1}
    with Image.open(kvasir.mask_path(case)) as picture:
        assert np.array_equal(volume.label[0], np.asarray(picture.convert("L")) > 127)


def test_kvasir_instances_are_letterboxed_binary_polyps(kvasir):
    case = kvasir.cases("train")[0]  # 622 x 529: the letterbox pads the rows below 64 * 529 / 622
    image, masks = kvasir.instance_dataset(S)[0]
    height = round(S * kvasir.load_case(case).image.shape[1] / kvasir.load_case(case).image.shape[2])
    assert image.shape == (3, S, S) and image.dtype == torch.float32 and masks.dtype == torch.bool
    assert len(masks) >= 1 and masks.shape[1:] == (S, S) and masks.sum(0).max() <= 1
    assert image[:, height:].abs().sum() == 0 and not masks[:, height:].any()
    label = torch.as_tensor(kvasir.load_case(case).label[0], dtype=torch.float32)[None, None]
    expected = torch.nn.functional.interpolate(label, size=(height, S), mode="area")[0, 0] > 0.5
    union = masks.any(0)[:height]
    assert (union & expected).sum() / (union | expected).sum() > 0.85


def test_kvasir_stretched_images_fill_the_square_and_a_selection_narrows_the_cases(registry):
    root = shared_dataset("kvasir_seg")
    source = registry.get("dataset", "kvasir_seg").build(
        {"root": str(root), "fit": "stretch", "train": {"split_file": "split.json", "key": "unlabeled_pool"}})
    images = source.slice_dataset(S)
    assert isinstance(images, EpochAware) and len(images) == 880
    image = images[0]
    assert image.shape == (3, S, S) and 0.0 <= image.min() and image.max() <= 1.0
    assert image[:, -1].abs().sum() > 0  # no padding


def test_kvasir_without_its_folder_says_so(registry, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        registry.get("dataset", "kvasir_seg").build({"root": str(tmp_path / "absent")})


# ---- the recipe -----------------------------------------------------------------------------------

def test_source_mae_recipe_validates_and_pretrains_a_tiny_sam_on_scenes(tmp_path, capsys):
    recipe = REPO / "benchmarks" / "recipes" / "world" / "source_mae.toml"
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    run(recipe, [f"run.output_dir={tmp_path / 'run'}", "run.device=cpu", f"backbone.image_size={S}",
                 "data.num_images=8", "train.batch_size=4", "train.max_steps=2", "train.warmup=0",
                 "base_pretraining.pretext.hidden_dim=32"], False, ["test"], show_progress=False)
    header = read_header(tmp_path / "run" / "base.safetensors")
    assert header["origin"] == "self-pre-trained" and header["steps"] == 2
