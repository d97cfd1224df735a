"""SAMed's loss: ce_weight * CE + dice_weight * Dice (TransUNet's soft Dice)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import all_reduce_sum


class DiceCELoss(torch.nn.Module):
    """Dice over the whole global batch: per-class sums are all-reduced across ranks
    (differentiably), so N processes give the loss of one process with the same batch."""

    def __init__(self, num_classes: int, ce_weight: float = 0.2, dice_weight: float = 0.8, smooth: float = 1e-5):
        super().__init__()
        self.num_outputs = num_classes + 1  # background counts as a class, as in TransUNet
        self.ce_weight, self.dice_weight, self.smooth = ce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        # logits: B, K+1, h, w; target: B, h, w (int64)
        ce = F.cross_entropy(logits, target)
        score = logits.softmax(dim=1)
        onehot = F.one_hot(target, self.num_outputs).permute(0, 3, 1, 2).to(score.dtype)
        sums = torch.stack([(score * onehot).sum((0, 2, 3)),
                            (onehot * onehot).sum((0, 2, 3)),
                            (score * score).sum((0, 2, 3))])  # 3, K+1
        intersect, y_sum, z_sum = all_reduce_sum(sums)
        dice = 1 - (2 * intersect + self.smooth) / (z_sum + y_sum + self.smooth)
        dice = dice.mean()
        return {"loss": self.ce_weight * ce + self.dice_weight * dice, "ce": ce.detach(), "dice": dice.detach()}
