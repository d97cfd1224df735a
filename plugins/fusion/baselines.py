"""Table-4 baselines for HL-Attn. All take deltas K, ..., C (the backbone passes K, N, L, C).

* ``sum``: ``sum_k D_k``. No parameters.
* ``lac`` (linear arithmetic composition): ``sum_k s_k D_k`` with one learned scalar per
  expert, initialised to ``config.init`` (1.0: starts as ``sum``).
* ``mole`` (mixture of LoRA experts, per-token gate): ``g = softmax(Linear_{C->K}(mean_k D_k) / T)``
  per token, output ``K * sum_k g_k D_k``. The gate reads the *mean* of the deltas (one gate
  input per token, O(C*K) parameters), unnormalised, so the experts' scale reaches it. The gate
  Linear is zero-initialised, so the gate starts uniform (1/K) and, with the factor K, ``mole``
  starts as ``sum``.
* ``lorahub``: learned scalars ``w_k`` (init 1/K) that merge the experts' LoRA matrices into one
  LoRA before the block runs, as LoraHub does: ``A = sum_k w_k A_k``, ``B = sum_k w_k B_k``,
  delta weight ``B @ A``. It cannot act on deltas: it is a ``LoraMerger``, not a Fuser; the
  backbone reads ``mixing_weights()`` (or calls ``merge(a, b)``) and ``forward`` raises.

``sum``, ``lac`` and ``mole`` are linear in the deltas given their weights, so with scope
``attention`` they mix the experts' attention outputs *before* the block's frozen output
projection (``output_before_projection = True``: the block projects ``a_0 + mix`` once);
``mole``'s gate folds the projection into its Linear (``fold_projection``).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from samora_kit.api import ComponentConfig

from .common import check_deltas, check_expert_names, fold_into_linear


class SumConfig(ComponentConfig):
    pass


class LacConfig(ComponentConfig):
    init: float = 1.0  # initial weight of every expert (1.0: starts as the plain sum)


class MoleConfig(ComponentConfig):
    temperature: float = Field(1.0, gt=0.0)  # softmax temperature of the gate


class LoraHubConfig(ComponentConfig):
    pass


class _DeltaFuser(nn.Module):
    output_before_projection = True  # linear in the deltas: the block's projection applies to the mix

    def __init__(self, name: str, dim: int, expert_names: list[str]) -> None:
        super().__init__()
        self.fuser_name = name
        self.dim = dim
        self.expert_names = check_expert_names(name, expert_names)
        self.num_experts = len(self.expert_names)

    def check(self, deltas: torch.Tensor) -> None:
        check_deltas(self.fuser_name, deltas, self.num_experts, self.dim)

    def fold_projection(self, weight: torch.Tensor) -> None:
        """Deltas now arrive before the projection: a weighted sum needs no change."""


class SumFuser(_DeltaFuser):
    """Plain sum of the expert deltas."""

    def __init__(self, dim: int, expert_names: list[str]) -> None:
        super().__init__("sum", dim, expert_names)

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        self.check(deltas)
        return deltas.sum(0)


class LacFuser(_DeltaFuser):
    """Learned scalar weight per expert: sum_k s_k D_k."""

    def __init__(self, dim: int, expert_names: list[str], init: float = 1.0) -> None:
        super().__init__("lac", dim, expert_names)
        self.weights = nn.Parameter(torch.full((self.num_experts,), float(init)))

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        self.check(deltas)
        return torch.tensordot(self.weights.to(deltas.dtype), deltas, dims=1)


class MoleFuser(_DeltaFuser):
    """Per-token softmax gate over the experts, read from the mean delta; starts as the sum."""

    def __init__(self, dim: int, expert_names: list[str], temperature: float = 1.0) -> None:
        super().__init__("mole", dim, expert_names)
        self.temperature = temperature
        self.gate = nn.Linear(dim, self.num_experts)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def fold_projection(self, weight: torch.Tensor) -> None:
        """The gate reads the mean delta before the projection: its Linear takes the projection in."""
        fold_into_linear(self.gate, weight)
        self.dim = self.gate.in_features

    def gates(self, deltas: torch.Tensor) -> torch.Tensor:
        """..., K gate weights per token (sum to 1)."""
        return torch.softmax(self.gate(deltas.mean(0)) / self.temperature, dim=-1)

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        self.check(deltas)
        g = self.gates(deltas).movedim(-1, 0).unsqueeze(-1)  # K, ..., 1
        return self.num_experts * (g.to(deltas.dtype) * deltas).sum(0)


class LoraHubFuser(nn.Module):
    """Learned weights w_k (init 1/K) merging the experts' LoRA A/B into one LoRA: a LoraMerger (the
    interfaces' contract), no forward on deltas."""

    def __init__(self, dim: int, expert_names: list[str]) -> None:
        super().__init__()
        self.dim = dim
        self.expert_names = check_expert_names("lorahub", expert_names)
        self.num_experts = len(self.expert_names)
        self.weights = nn.Parameter(torch.full((self.num_experts,), 1.0 / self.num_experts))

    def mixing_weights(self) -> torch.Tensor:
        """K weights, in expert_names order; differentiable (the parameter itself)."""
        return self.weights

    def merge(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked expert LoRA factors a: K, r, C_in and b: K, C_out, r -> merged (r, C_in), (C_out, r)."""
        if a.shape[0] != self.num_experts or b.shape[0] != self.num_experts:
            raise ValueError(f"fuser 'lorahub' expects {self.num_experts} stacked A and B matrices; "
                             f"got A {tuple(a.shape)}, B {tuple(b.shape)}")
        w = self.weights.to(a.dtype)
        return torch.tensordot(w, a, dims=1), torch.tensordot(w, b, dims=1)

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        raise RuntimeError("fuser 'lorahub' merges the experts' LoRA A/B matrices (a LoraMerger) and "
                           "cannot fuse deltas: the backbone must build one LoRA from mixing_weights() "
                           "(A = sum_k w_k A_k, B = sum_k w_k B_k) instead of calling the fuser on deltas")


def build_sum(config: SumConfig, *, dim: int, num_heads: int, expert_names: list[str]) -> SumFuser:
    """Sum of the expert deltas (no parameters)."""
    return SumFuser(dim, list(expert_names))


def build_lac(config: LacConfig, *, dim: int, num_heads: int, expert_names: list[str]) -> LacFuser:
    """LAC: one learned scalar weight per expert (init 1.0: starts as the sum)."""
    return LacFuser(dim, list(expert_names), config.init)


def build_mole(config: MoleConfig, *, dim: int, num_heads: int, expert_names: list[str]) -> MoleFuser:
    """MoLE: per-token softmax gate over the experts from the mean delta (starts as the sum)."""
    return MoleFuser(dim, list(expert_names), config.temperature)


def build_lorahub(config: LoraHubConfig, *, dim: int, num_heads: int, expert_names: list[str]) -> LoraHubFuser:
    """LoraHub: learned weights (init 1/K) merging the experts' LoRA A/B into one LoRA."""
    return LoraHubFuser(dim, list(expert_names))
