"""The few-shot benchmark compares paired arms: one draw, one decoder initialisation."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.flows.common import seed_everything
from samora_kit.train.model import build_model
from samora_kit_plugins.lora.checkpoints import save_sam_layout
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fewshot():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import fewshot
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return fewshot


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny self-pre-trained base in SAM's layout, standing in for runs/base-hippocampus."""
    torch.manual_seed(0)
    sam = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=64))
    path, _ = save_sam_layout(tmp_path_factory.mktemp("base") / "base.safetensors",
                              sam.encoder_state_in_official_layout(),
                              {"format": "sam-encoder", "origin": "self-pre-trained", "variant": "tiny"})
    return path


def _decoder(fewshot, arm: str, draw: int, base: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The decoder an arm's run of `draw` starts from, built as `samora-kit run` builds it."""
    registry = default_registry()
    recipe_arm, extra = fewshot.ARMS[arm]
    overrides = [*fewshot.arm_overrides(extra, 3, draw, tmp_path / arm), f"backbone.checkpoint={base}"]
    recipe = load_recipe(REPO / fewshot._recipe("hippocampus", recipe_arm), registry, overrides)
    seed_everything(recipe.run.seed)
    return build_model(recipe, registry, num_classes=2).decoder.state_dict()


def test_every_arm_of_a_draw_starts_from_the_same_decoder(fewshot, base, tmp_path):
    arms = ["samed", "samora", "decoder_only", "decoder_only_short", "h_sam", "h_samora"]
    decoders = {arm: _decoder(fewshot, arm, 1, base, tmp_path) for arm in arms}
    for family in (["samed", "samora", "decoder_only", "decoder_only_short"], ["h_sam", "h_samora"]):
        first = decoders[family[0]]
        for arm in family[1:]:
            assert decoders[arm].keys() == first.keys()
            different = [k for k in first if not torch.equal(decoders[arm][k], first[k])]
            assert not different, f"{arm} starts from another decoder than {family[0]}: {different[:3]}"
    other_draw = _decoder(fewshot, "samed", 2, base, tmp_path)  # each draw has its own initialisation
    assert any(not torch.equal(other_draw[k], decoders["samed"][k]) for k in other_draw)


def test_paired_difference_is_the_mean_of_per_draw_differences_with_a_t_interval(fewshot):
    mean, low, high = fewshot.paired_difference([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])
    assert mean == pytest.approx(0.2)
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2) x sd of (0.1, 0.2, 0.3) / sqrt(3)
    assert (low, high) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-4)  # t rounded to 4 digits
    assert math.isnan(fewshot.paired_difference([0.5], [0.4])[1])
