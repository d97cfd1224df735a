"""Validation during training: data.val's cases, predicted and scored as `evaluate` scores the test
cases (predict_volume, score_volume, summarise; TransUNet policy), for metrics.jsonl's learning curves.
Under torchrun every rank scores its share of the cases and the scores are gathered, so no rank waits
on another's prediction."""

from __future__ import annotations


import torch.distributed as dist

from ..errors import DataError, SamoraError
from ..interfaces import ValidationCases
from ..train.distributed import DistContext
from .inference import predict_volume
from .metrics import score_volume, summarise

POLICY = "transunet"  # the convention of the published Dice figures the curves are read against


def validation_cases(recipe, adapter) -> list[str]:
    """data.val's ids, resolved like data.train / data.test ([] when the recipe has none); a case that is
    also a test case is refused: validation must never see the test set."""
    if not isinstance(recipe.data, ValidationCases) or recipe.data.val is None:
        return []
    selection = recipe.data.val
    try:
        cases = selection.resolve(None, recipe.data.root)
    except DataError as exc:
        raise DataError(f"data.val: {exc}") from None
    if not cases:
        raise DataError(f"data.val: {selection.describe()} selects no cases; name some, or drop data.val")
    test = set(adapter.cases("test"))
    shared = [case for case in cases if case in test]
    if shared:
        shown = ", ".join(shared[:10]) + (f" and {len(shared) - 10} more" if len(shared) > 10 else "")
        raise SamoraError(f"data.val ({selection.describe()}) holds {len(shared)} test case(s): {shown}; "
                          "validation must never score test subjects: take them out of data.val or data.test")
    return cases


class ValidationSet:
    """This rank's share of the validation volumes and how to score the model on all of them."""

    def __init__(self, model, adapter, cases: list[str], every: int, batch_size: int, ctx: DistContext):
        self.model, self.every, self.batch_size, self.ctx = model, every, batch_size, ctx
        self.num_classes, self.class_names = adapter.num_classes, adapter.class_names
        self.cases = cases
        try:
            self.volumes = [adapter.load_case(case) for case in cases[ctx.rank::ctx.world_size]]
        except DataError as exc:  # an id the data set does not hold, a broken file
            raise DataError(f"data.val: {exc}") from None
        unlabelled = [v.case_id for v in self.volumes if v.label is None]
        if unlabelled:
            raise DataError(f"data.val: case(s) {', '.join(unlabelled)} have no label map; validation needs labels")

    def __call__(self) -> dict[str, float]:
        """{"val_dice": mean over classes, "val_dice_<class>": mean over cases, ...}. Leaves the model in
        eval mode; the loop restores what it was."""
        mine = {}
        for volume in self.volumes:
            prediction = predict_volume(self.model, volume.image, self.batch_size, self.ctx.device)
            mine[volume.case_id] = score_volume(prediction, volume.label, self.num_classes, POLICY, volume.spacing)
        per_case = _gathered(mine, self.ctx)
        summary = summarise({case: per_case[case] for case in self.cases}, self.class_names, POLICY)
        scores = {"val_dice": _number(summary["mean"]["dice"])}
        for name, entry in summary["classes"].items():
            scores[f"val_dice_{name.replace('/', '_')}"] = _number(entry["dice_mean"])
        return scores


def _gathered(mine: dict, ctx: DistContext) -> dict:
    """Every rank's {case: scores}, merged (a single process: its own)."""
    if ctx.world_size == 1:
        return mine
    shares: list = [None] * ctx.world_size
    dist.all_gather_object(shares, mine)
    return {case: scores for share in shares for case, scores in share.items()}


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)
