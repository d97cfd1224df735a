"""Losses shared by the pretext tasks and the teachers' CPT objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent: z1[i] and z2[i] (B, D) are positives, the other 2B - 2 embeddings negatives."""
    b = z1.shape[0]
    if b < 2:
        raise ValueError("NT-Xent needs at least 2 images per batch (the others are the negatives)")
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # 2B, D
    logits = z @ z.t() / temperature  # 2B, 2B
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def normalized_patch_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm_pix_loss target: each patch (..., P) standardised by its own mean and variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()
