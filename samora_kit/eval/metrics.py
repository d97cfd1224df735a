"""Per-class Dice and HD95 for label maps, under a named empty-mask policy.

"transunet" reproduces the convention behind every published Synapse number (TransUNet, SAMed,
H-SAM): medpy's dc and hd95, HD95 in voxels. "strict" reports HD95 in mm with MONAI and keeps
misses and false positives visible instead of scoring them as perfect or zero-distance.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

POLICIES = ("transunet", "strict")

POLICY_DESCRIPTIONS = {
    "transunet": (
        "TransUNet/SAMed convention: medpy dc and hd95 with HD95 in voxels (spacing ignored); "
        "GT empty and prediction non-empty scores (1, 0), prediction empty scores (0, 0), "
        "and every case counts in the means."
    ),
    "strict": (
        "Strict: plain Dice and MONAI HD95 (95th percentile) in mm using the voxel spacing; "
        "both masks empty is excluded from the means, a miss or false positive scores Dice 0 "
        "and HD95 = the volume's diagonal in mm."
    ),
}


@dataclass(frozen=True)
class ClassScore:
    dice: float
    hd95: float
    status: str  # "ok", "both_empty", "miss" (GT non-empty, prediction empty), "false_positive"


def _check_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth shapes differ: {pred.shape} vs {gt.shape}")


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown metric policy {policy!r}; expected one of {POLICIES}")


def _spacing_per_axis(spacing: float | Sequence[float], ndim: int) -> np.ndarray:
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.shape != (ndim,):
        raise ValueError(f"spacing needs one value per axis ({ndim}), got {tuple(np.atleast_1d(spacing))}")
    return values


def medpy_dc(pred: np.ndarray, gt: np.ndarray) -> float:
    """medpy.metric.binary.dc: 2|A∩B| / (|A|+|B|) on the non-zero voxels."""
    _check_shapes(pred, gt)
    pred, gt = pred.astype(bool), gt.astype(bool)
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    # medpy <= 0.4 (used for the published results) returns 0.0 here; medpy 0.5 returns 1.0.
    if total == 0:
        return 0.0
    return 2.0 * np.count_nonzero(pred & gt) / float(total)


def _surface_distances(
    result: np.ndarray, reference: np.ndarray, spacing: np.ndarray | None
) -> np.ndarray:
    """Distance from each border voxel of `result` to the nearest border voxel of `reference`."""
    from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure  # slow import

    footprint = generate_binary_structure(result.ndim, 1)
    result_border = result ^ binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ binary_erosion(reference, structure=footprint, iterations=1)
    return distance_transform_edt(~reference_border, sampling=spacing)[result_border]


def medpy_hd95(pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """medpy.metric.binary.hd95: 95th percentile of both directions' surface distances, pooled."""
    _check_shapes(pred, gt)
    pred, gt = np.atleast_1d(pred.astype(bool)), np.atleast_1d(gt.astype(bool))
    if not pred.any() or not gt.any():
        raise ValueError("hd95 needs a non-empty prediction and ground truth")
    sampling = None if spacing is None else _spacing_per_axis(spacing, pred.ndim)
    distances = np.hstack((_surface_distances(pred, gt, sampling), _surface_distances(gt, pred, sampling)))
    return float(np.percentile(distances, 95))


def _score_transunet(pred: np.ndarray, gt: np.ndarray) -> ClassScore:
    if pred.any() and gt.any():
        return ClassScore(medpy_dc(pred, gt), medpy_hd95(pred, gt), "ok")
    if pred.any():
        return ClassScore(1.0, 0.0, "false_positive")
    return ClassScore(0.0, 0.0, "miss" if gt.any() else "both_empty")


def _score_strict(pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray) -> ClassScore:
    if not pred.any() and not gt.any():
        return ClassScore(math.nan, math.nan, "both_empty")
    if not pred.any() or not gt.any():
        diagonal = float(np.linalg.norm(np.asarray(pred.shape) * spacing))
        return ClassScore(0.0, diagonal, "miss" if gt.any() else "false_positive")
    dice = 2.0 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt))
    from monai.metrics import compute_hausdorff_distance  # monai is slow to import: only when scoring

    # MONAI wants one-hot [batch, channel, *spatial]; it warns about its own internal argument
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        hd95 = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(gt)[None, None],
            include_background=True,
            percentile=95,
            spacing=spacing.tolist(),
        )
    return ClassScore(float(dice), float(hd95.item()), "ok")


def score_volume(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    policy: str,
    spacing: float | Sequence[float] = (1.0, 1.0, 1.0),
) -> list[ClassScore]:
    """Score foreground classes 1..num_classes of two integer label maps (2D or 3D)."""
    _check_policy(policy)
    _check_shapes(pred, gt)
    if policy == "strict":
        spacing_mm = _spacing_per_axis(spacing, pred.ndim)
        return [_score_strict(pred == c, gt == c, spacing_mm) for c in range(1, num_classes + 1)]
    return [_score_transunet(pred == c, gt == c) for c in range(1, num_classes + 1)]


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _nan_stats(values: list[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std())


def summarise(per_case: dict[str, list[ClassScore]], class_names: list[str], policy: str) -> dict:
    """Per-class mean/std and status counts over cases, then the mean over classes.

    Means skip NaN scores (strict both-empty); a mean with nothing to average is reported as None.
    """
    _check_policy(policy)
    for case, scores in per_case.items():
        if len(scores) != len(class_names):
            raise ValueError(f"case {case!r} has {len(scores)} class scores, expected {len(class_names)}")

    classes: dict[str, dict] = {}
    dice_means, hd95_means = [], []
    for index, name in enumerate(class_names):
        scores = [case_scores[index] for case_scores in per_case.values()]
        dice_mean, dice_std = _nan_stats([s.dice for s in scores])
        hd95_mean, hd95_std = _nan_stats([s.hd95 for s in scores])
        dice_means.append(dice_mean)
        hd95_means.append(hd95_mean)
        statuses = [s.status for s in scores]
        classes[name] = {
            "dice_mean": _json_float(dice_mean),
            "dice_std": _json_float(dice_std),
            "hd95_mean": _json_float(hd95_mean),
            "hd95_std": _json_float(hd95_std),
            "n": sum(not math.isnan(s.dice) for s in scores),
            "misses": statuses.count("miss"),
            "false_positives": statuses.count("false_positive"),
            "both_empty": statuses.count("both_empty"),
        }

    return {
        "policy": policy,
        "policy_description": POLICY_DESCRIPTIONS[policy],
        "n_cases": len(per_case),
        "classes": classes,
        "mean": {
            "dice": _json_float(_nan_stats(dice_means)[0]),
            "hd95": _json_float(_nan_stats(hd95_means)[0]),
        },
    }
