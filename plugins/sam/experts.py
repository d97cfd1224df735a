"""Stage 2: K frozen LoRA experts fused inside a SAM encoder block, all variants batched.

Per block: norm1 once, window partition once, the frozen qkv once, every expert's q/v
delta in one pair of einsums; the K+1 qkv variants [base, base+Δ_1, ..., base+Δ_K] go
through ONE batched attention (variant_attention.py). F = variant 0, D_i = variant i -
variant 0, and the fuser returns Fuse(D) which is added to F:

* scope "attention": D are attention-branch outputs per token group (windows or all
  tokens), x' = x + F_attn + Fuse(D), then the MLP once. The frozen output projection P is
  folded into the fuser (fusion_step.py), so it runs once, not K+1 times.
* scope "block": every variant also runs residual + MLP (batched); D_i = E_i(x) - F(x)
  on the block output, grouped into windows (windowed blocks) or all tokens (global).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn

from .fusion_step import FusionState, check_fuser, fold_fuser, fuse_attention, record_ratio, run_fuser, window_valid
from .lora import QKV_ORDER, check_fused_qkv
from .variant_attention import low_rank_variants_attention, variants_attention

# (dim, num_heads, expert_names) -> fuser module; called once per expert block
FuserFactory = Callable[[int, int, list[str]], nn.Module]
SCOPES = ("attention", "block")
LOW_RANK_LOGITS = True  # benchmarks switch it off to measure what the rank-r logits save


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


class ExpertFusedBlock(Block):
    """A segment-anything Block whose forward runs the frozen path and K experts batched and
    adds the fused expert deltas. Made from a built Block by `install_experts` (the class is
    swapped in place, so parameter names stay `blocks.N.norm1...`); adds `fuser`, `fusion`, `scope`."""

    fuser: nn.Module
    fusion: FusionState
    scope: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        qkv: ExpertsQKV = self.attn.qkv
        shortcut = x
        batch, height, width, dim = x.shape
        tokens = self.norm1(x)
        pad_hw = (height, width)
        if self.window_size > 0:
            tokens, pad_hw = window_partition(tokens, self.window_size)
        n, h, w, _ = tokens.shape  # n = batch * windows (windowed) or batch (global)

        if self.fuser.merges_lora:  # LoRAHub: one LoRA from the weighted sums of A and B
            a, b = qkv.merged(self.fuser.mixing_weights())
            q, k, v = qkv.variants(tokens, a, b, include_base=False, shared=True)
            out = variants_attention(self.attn, *(t.reshape(t.shape[0], n, h * w, dim) for t in (q, k, v)), (h, w))
        elif qkv.low_rank_q and LOW_RANK_LOGITS:  # experts' logits as rank-r corrections of the frozen ones
            q0, u, b, k, v = qkv.factored_variants(tokens.reshape(n, h * w, dim))
            out = low_rank_variants_attention(self.attn, q0, u, b, k, v, (h, w))
        else:
            q, k, v = qkv.variants(tokens, shared=True)  # K+1 (or 1 when shared), n, h, w, C
            out = variants_attention(self.attn, *(t.reshape(t.shape[0], n, h * w, dim) for t in (q, k, v)), (h, w))
        count = out.shape[0]  # V, n, L, C before the output projection

        if self.fuser.merges_lora:
            x = shortcut + self._unpartition(self.attn.proj(out[0]).view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        if self.scope == "attention":
            valid = window_valid(batch, (height, width), self.window_size, window_partition, x.device)
            attn_out = fuse_attention(self, out, self.attn.proj, valid)  # n, L, C
            x = shortcut + self._unpartition(attn_out.view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        # scope "block": residual + MLP per variant, batched
        attn_out = self._unpartition(self.attn.proj(out).view(count * n, h, w, dim), pad_hw, (height, width))
        blocks = shortcut + attn_out.view(count, batch, height, width, dim)
        blocks = blocks + self.mlp(self.norm2(blocks))
        frozen, experts_out = blocks.split([1, count - 1])
        frozen, deltas = frozen[0], experts_out - frozen  # K, B, H, W, C
        experts = count - 1
        if self.window_size > 0:
            windows, pad = window_partition(deltas.reshape(experts * batch, height, width, dim), self.window_size)
            per_expert = windows.shape[0] // experts
            valid = window_valid(batch, (height, width), self.window_size, window_partition, x.device)
            fused = run_fuser(self.fuser, windows.reshape(experts, per_expert, -1, dim), valid)
            fused = window_unpartition(fused.view(per_expert, self.window_size, self.window_size, dim),
                                       self.window_size, pad, (height, width))
        else:
            fused = run_fuser(self.fuser, deltas.reshape(experts, batch, height * width, dim), None)
            fused = fused.view(batch, height, width, dim)
        if self.fusion.recording:  # against what the frozen block adds to its input
            record_ratio(self.fusion, fused, frozen - shortcut, None)
        return frozen + fused

    def _unpartition(self, x: torch.Tensor, pad_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
        return window_unpartition(x, self.window_size, pad_hw, hw) if self.window_size > 0 else x


def install_experts(block: Block, names: Sequence[str], rank: int, targets: Sequence[str],
                    fuser: nn.Module, scope: str = "attention") -> ExpertFusedBlock:
    """Turn a built (frozen) SAM Block into an ExpertFusedBlock in place and return it. With scope
    "attention" the block's frozen output projection is folded into the fuser when it can take it."""
    if scope not in SCOPES:
        raise ValueError(f"experts scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    check_fuser(fuser, len(names))
    block.attn.qkv = ExpertsQKV(block.attn.qkv, names, rank, targets)
    block.__class__ = ExpertFusedBlock
    fold_fuser(block, fuser, block.attn.proj if scope == "attention" and not fuser.merges_lora else None)
    block.scope = scope
    return block
