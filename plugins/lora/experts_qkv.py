"""K frozen LoRA experts on one fused qkv projection, stacked so that every expert's delta comes
from one einsum. SAM's and SAM2's fused blocks (sam/experts.py, sam2/experts.py) both run on it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .lora_qkv import QKV_ORDER, check_fused_qkv


class ExpertsQKV(nn.Module):
    """A frozen fused qkv Linear(C_in, 3*C_out) plus K frozen LoRA experts, stacked for batched deltas.

    Buffers `expert_a` (T, K, r, C_in) and `expert_b` (T, K, C_out, r), T = targets in q, k, v
    order, K = experts in `names` order. Calling the module gives the frozen qkv only;
    the fused block asks for the variants."""

    def __init__(self, qkv: nn.Linear, names: Sequence[str], rank: int = 4,
                 targets: Sequence[str] = ("q", "v")) -> None:
        super().__init__()
        check_fused_qkv(qkv, targets)
        self.base = qkv.requires_grad_(False)
        self.names = tuple(names)
        self.rank = rank
        self.targets = tuple(t for t in QKV_ORDER if t in targets)
        self.dim_out = qkv.out_features // 3
        self.register_buffer("expert_a", torch.empty(len(self.targets), len(self.names), rank, qkv.in_features))
        self.register_buffer("expert_b", torch.zeros(len(self.targets), len(self.names), self.dim_out, rank))
        self.reset_experts()

    @property
    def num_experts(self) -> int:
        return len(self.names)

    def reset_experts(self) -> None:
        """SAMed init per expert: A Kaiming-uniform (as nn.Linear(C, r)), B zero."""
        with torch.no_grad():
            for t in range(len(self.targets)):
                for k in range(self.num_experts):
                    nn.init.kaiming_uniform_(self.expert_a[t, k], a=math.sqrt(5))
            self.expert_b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)  # the frozen projection; experts enter through `variants`

    def deltas(self, x: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
        """x: ..., C_in -> T, K, ..., C_out: B_tk A_tk x for every target t and expert k at once."""
        a = self.expert_a if a is None else a
        b = self.expert_b if b is None else b
        lead, dim = x.shape[:-1], x.shape[-1]
        hidden = torch.einsum("nc,tkrc->tknr", x.reshape(-1, dim), a.to(x.dtype))
        out = torch.einsum("tknr,tkcr->tknc", hidden, b.to(x.dtype))
        return out.reshape(*out.shape[:2], *lead, out.shape[-1])

    def variants(self, x: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                 include_base: bool = True, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: ..., C_in -> q, k, v each V, ..., C_out: [frozen, frozen + Δ_1, ..., frozen + Δ_K] (V = K + 1),
        or only the expert variants when include_base is False. With `shared`, a projection
        no expert changes is returned once, 1, ..., C, instead of expanded to V."""
        a = self.expert_a if a is None else a
        b = self.expert_b if b is None else b
        if include_base:  # a zero expert first: variant 0 is base + 0, exactly the frozen path, no cat
            a = F.pad(a, (0, 0, 0, 0, 1, 0))
            b = F.pad(b, (0, 0, 0, 0, 1, 0))
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        parts = self.base(flat).chunk(3, dim=-1)  # each N, C_out
        hidden = torch.einsum("nc,tkrc->tknr", flat, a.to(x.dtype))  # T, V, N, r: one matmul, C -> T*V*r
        count = a.shape[1]
        out = []
        for name, part in zip(QKV_ORDER, parts):
            if name in self.targets:
                t = self.targets.index(name)  # frozen + B_k A_k x for every variant k, add fused in the bmm
                varied = torch.baddbmm(part.unsqueeze(0), hidden[t], b[t].to(x.dtype).transpose(1, 2))
            else:
                varied = part.unsqueeze(0) if shared else part.unsqueeze(0).expand(count, -1, -1)
            out.append(varied.view(varied.shape[0], *lead, self.dim_out))
        return out[0], out[1], out[2]

    @property
    def low_rank_q(self) -> bool:
        """Each expert changes q by a rank-r term and leaves k frozen (SAMed's q/v targets)."""
        return "q" in self.targets and "k" not in self.targets

    def factored_variants(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: ..., C_in -> q0 ..., C_out (frozen q); u K, ..., r and b K, C_out, r (expert k's q = q0 + u_k b_k^T);
        k 1, ..., C_out (frozen); v V, ..., C_out (or 1, ..., C_out when v has no LoRA). Needs `low_rank_q`."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        q0, k, v = self.base(flat).chunk(3, dim=-1)  # each N, C_out
        a = F.pad(self.expert_a, (0, 0, 0, 0, 1, 0))  # a zero expert first: variant 0 = the frozen path
        hidden = torch.einsum("nc,tkrc->tknr", flat, a.to(x.dtype)).unbind(0)  # T x (V, N, r): one matmul
        u = hidden[self.targets.index("q")][1:]  # K, N, r
        b = self.expert_b[self.targets.index("q")].to(x.dtype)  # K, C_out, r
        if "v" in self.targets:
            t = self.targets.index("v")
            b_v = F.pad(self.expert_b[t], (0, 0, 0, 0, 1, 0)).to(x.dtype)
            v = torch.baddbmm(v.unsqueeze(0), hidden[t], b_v.transpose(1, 2))  # V, N, C_out
        else:
            v = v.unsqueeze(0)
        return (q0.view(*lead, self.dim_out), u.view(u.shape[0], *lead, u.shape[-1]), b,
                k.view(1, *lead, self.dim_out), v.view(v.shape[0], *lead, self.dim_out))

    def merged(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LoRA with A = Σ_k w_k A_k and B = Σ_k w_k B_k (LoRAHub), shaped T, 1, r, C_in / T, 1, C_out, r."""
        if weights.shape != (self.num_experts,):
            raise ValueError(f"mixing_weights() must return {self.num_experts} weights (one per expert "
                             f"{list(self.names)}), got shape {tuple(weights.shape)}")
        w = weights.to(self.expert_a.dtype)
        a = torch.einsum("k,tkrc->trc", w, self.expert_a).unsqueeze(1)
        b = torch.einsum("k,tkcr->tcr", w, self.expert_b).unsqueeze(1)
        return a, b

    def expert_state(self, name: str) -> dict[str, torch.Tensor]:
        """One expert's tensors keyed as LoRAQKV names them (`lora_a.q.weight`, ...)."""
        k = self._index(name)
        state = {}
        for t, target in enumerate(self.targets):
            state[f"lora_a.{target}.weight"] = self.expert_a[t, k].detach().clone()
            state[f"lora_b.{target}.weight"] = self.expert_b[t, k].detach().clone()
        return state

    def load_expert(self, name: str, state: dict[str, torch.Tensor]) -> None:
        k = self._index(name)
        with torch.no_grad():
            for t, target in enumerate(self.targets):
                self.expert_a[t, k].copy_(state[f"lora_a.{target}.weight"])
                self.expert_b[t, k].copy_(state[f"lora_b.{target}.weight"])

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no expert named {name!r}; experts are {list(self.names)}")
        return self.names.index(name)

    def extra_repr(self) -> str:
        return f"experts={list(self.names)}, rank={self.rank}, targets={''.join(self.targets)}"
