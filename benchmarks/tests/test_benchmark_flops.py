"""The benchmarks' FLOP counts include attention on the CPU's fused kernel (torch's counter skips it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F



def test_fused_attention_on_the_cpu_counts_as_the_explicit_attention_it_computes():
    from samora_benchmarks.common import flops_of

    q, k, v = (torch.randn(2, 3, 49, 16) for _ in range(3))
    with torch.no_grad():
        fused = flops_of(lambda: F.scaled_dot_product_attention(q, k, v))
        explicit = flops_of(lambda: (q @ k.transpose(-1, -2) / 4).softmax(-1) @ v)
    assert fused == explicit == 2 * (2 * 2 * 3 * 49 * 49 * 16)  # two matmuls of L x L x head_dim per head
    q.requires_grad_(True)
    trained = flops_of(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert trained == fused * 7 / 2  # + the backward: recomputed logits and the gradients of q, k, v (5 matmuls)
