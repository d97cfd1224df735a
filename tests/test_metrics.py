import json
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from samora_kit.eval.metrics import ClassScore, medpy_dc, medpy_hd95, score_volume, summarise

SHAPES = [(40, 48), (20, 24, 16)]
SPACINGS = {2: [None, (0.7, 1.3)], 3: [None, (0.76, 0.76, 3.0)]}


def random_blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A non-empty binary mask of irregular blobs: thresholded smoothed noise."""
    while True:
        field = gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.5, 4.0))
        mask = field > np.quantile(field, rng.uniform(0.6, 0.95))
        if mask.any():
            return mask


def random_pairs(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        yield random_blobs(rng, shape), random_blobs(rng, shape)


def test_medpy_dc_matches_medpy_on_random_shapes():
    binary = pytest.importorskip("medpy.metric.binary")
    for pred, gt in random_pairs(seed=0, count=20):
        assert medpy_dc(pred, gt) == pytest.approx(binary.dc(pred, gt), abs=1e-9)


def test_medpy_hd95_matches_medpy_on_random_shapes():
    binary = pytest.importorskip("medpy.metric.binary")
    for pred, gt in random_pairs(seed=1, count=16):
        for spacing in SPACINGS[pred.ndim]:
            expected = binary.hd95(pred, gt, voxelspacing=spacing)
            assert medpy_hd95(pred, gt, spacing) == pytest.approx(expected, abs=1e-9)


def test_medpy_hd95_matches_medpy_on_nested_and_identical_masks():
    binary = pytest.importorskip("medpy.metric.binary")
    outer = np.zeros((16, 16, 8), dtype=bool)
    outer[2:14, 3:12, 1:7] = True
    inner = np.zeros_like(outer)
    inner[5:9, 5:9, 3:5] = True
    assert medpy_hd95(inner, outer) == pytest.approx(binary.hd95(inner, outer), abs=1e-9)
    assert medpy_hd95(outer, outer) == 0.0


def test_monai_hd95_differs_from_medpy_on_random_shapes():
    # MONAI takes the larger directed 95th percentile; medpy pools both directions first.
    binary = pytest.importorskip("medpy.metric.binary")
    differences = []
    for pred, gt in random_pairs(seed=2, count=12):
        spacing = (1.0,) * pred.ndim
        [monai_score] = score_volume(pred.astype(np.uint8), gt.astype(np.uint8), 1, "strict", spacing)
        differences.append(abs(monai_score.hd95 - binary.hd95(pred, gt)))
    assert max(differences) > 1e-3


def test_transunet_both_present_uses_medpy():
    pred = np.zeros((12, 12, 6), dtype=np.uint8)
    gt = np.zeros_like(pred)
    pred[2:8, 2:8, 1:4] = 1
    gt[3:10, 2:9, 1:5] = 1
    [score] = score_volume(pred, gt, 1, "transunet", spacing=(0.5, 0.5, 5.0))
    assert score == ClassScore(medpy_dc(pred, gt), medpy_hd95(pred, gt), "ok")


@pytest.mark.parametrize(
    ("pred_on", "gt_on", "expected"),
    [
        (True, False, ClassScore(1.0, 0.0, "false_positive")),
        (False, True, ClassScore(0.0, 0.0, "miss")),
        (False, False, ClassScore(0.0, 0.0, "both_empty")),
    ],
)
def test_transunet_edge_cases(pred_on: bool, gt_on: bool, expected: ClassScore):
    pred = np.zeros((8, 8, 4), dtype=np.uint8)
    gt = np.zeros_like(pred)
    pred[2:5, 2:5, 1:3] = pred_on
    gt[3:6, 3:6, 1:3] = gt_on
    assert score_volume(pred, gt, 1, "transunet") == [expected]


def test_score_volume_scores_each_foreground_class():
    gt = np.zeros((10, 10, 4), dtype=np.uint8)
    gt[1:4, 1:4] = 1
    gt[6:9, 6:9] = 2
    pred = gt.copy()
    pred[6:9, 6:9] = 0
    scores = score_volume(pred, gt, 3, "transunet")
    assert [s.status for s in scores] == ["ok", "miss", "both_empty"]
    assert scores[0].dice == 1.0 and scores[0].hd95 == 0.0


def test_strict_empty_cases_and_miss_counting():
    spacing = (1.0, 1.0, 2.5)
    gt = np.zeros((10, 12, 4), dtype=np.uint8)
    gt[2:6, 2:6, 1:3] = 1
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 1:3] = 2
    miss, false_positive, both_empty = score_volume(pred, gt, 3, "strict", spacing)

    diagonal = math.sqrt(10**2 + 12**2 + (4 * 2.5) ** 2)
    assert miss == ClassScore(0.0, pytest.approx(diagonal), "miss")
    assert false_positive == ClassScore(0.0, pytest.approx(diagonal), "false_positive")
    assert math.isnan(both_empty.dice) and math.isnan(both_empty.hd95)
    assert both_empty.status == "both_empty"

    summary = summarise({"a": [miss, false_positive, both_empty]}, ["c1", "c2", "c3"], "strict")
    assert summary["classes"]["c1"]["misses"] == 1
    assert summary["classes"]["c2"]["false_positives"] == 1
    assert summary["classes"]["c3"] == {
        "dice_mean": None, "dice_std": None, "hd95_mean": None, "hd95_std": None,
        "n": 0, "misses": 0, "false_positives": 0, "both_empty": 1,
    }
    assert summary["mean"]["dice"] == 0.0


def test_strict_hd95_is_in_mm():
    gt = np.zeros((12, 12, 6), dtype=np.uint8)
    gt[2:6, 2:6, 1:3] = 1
    pred = np.roll(gt, 2, axis=2)
    [voxels] = score_volume(pred, gt, 1, "strict", (1.0, 1.0, 1.0))
    [mm] = score_volume(pred, gt, 1, "strict", (1.0, 1.0, 3.0))
    assert voxels.status == mm.status == "ok"
    assert mm.hd95 == pytest.approx(3 * voxels.hd95)


def test_summarise_means_and_counts():
    per_case = {
        "case1": [ClassScore(0.8, 2.0, "ok"), ClassScore(0.0, 0.0, "miss")],
        "case2": [ClassScore(0.6, 4.0, "ok"), ClassScore(1.0, 0.0, "false_positive")],
    }
    summary = summarise(per_case, ["liver", "kidney"], "transunet")

    liver = summary["classes"]["liver"]
    assert liver["dice_mean"] == pytest.approx(0.7)
    assert liver["dice_std"] == pytest.approx(0.1)
    assert liver["hd95_mean"] == pytest.approx(3.0)
    assert liver["n"] == 2
    kidney = summary["classes"]["kidney"]
    assert (kidney["dice_mean"], kidney["misses"], kidney["false_positives"]) == (0.5, 1, 1)
    assert summary["mean"]["dice"] == pytest.approx(0.6)
    assert summary["mean"]["hd95"] == pytest.approx(1.5)
    assert summary["policy"] == "transunet"
    assert "voxels" in summary["policy_description"]
    json.dumps(summary, allow_nan=False)


def test_strict_summary_excludes_both_empty_from_means():
    nan = math.nan
    per_case = {
        "a": [ClassScore(0.9, 1.0, "ok")],
        "b": [ClassScore(nan, nan, "both_empty")],
        "c": [ClassScore(0.7, 3.0, "ok")],
    }
    organ = summarise(per_case, ["organ"], "strict")["classes"]["organ"]
    assert organ["dice_mean"] == pytest.approx(0.8)
    assert organ["hd95_mean"] == pytest.approx(2.0)
    assert (organ["n"], organ["both_empty"]) == (2, 1)


def test_unknown_policy_and_bad_inputs_raise():
    volume = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown metric policy"):
        score_volume(volume, volume, 1, "nnunet")
    with pytest.raises(ValueError, match="unknown metric policy"):
        summarise({}, [], "nnunet")
    with pytest.raises(ValueError, match="shapes differ"):
        score_volume(volume, np.zeros((4, 4, 5), dtype=np.uint8), 1, "transunet")
    with pytest.raises(ValueError, match="shapes differ"):
        medpy_dc(volume, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="spacing"):
        score_volume(volume, volume, 1, "strict", spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="expected 2"):
        summarise({"a": [ClassScore(1.0, 0.0, "ok")]}, ["x", "y"], "transunet")
