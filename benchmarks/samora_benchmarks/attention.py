"""Attention kernels for SAM's decomposed relative positions: milliseconds per call, forward only
(infer) and forward + backward to the input (train), of one ViT-B attention (x -> attn(x)) and of a
fused expert block's K+1 variants (x -> the variants' attention outputs, before the projection).

Candidates, one attention: `explicit` (segment-anything's own Attention: logits, + rel-pos, softmax),
`sdpa_bias` (SDPA with the rel-pos term as an L x L float mask), `sdpa_folded` (the kit's: the rel-pos
term folded into q and k, SDPA with no mask), `flex` / `flex_compiled` (FlexAttention, the rel-pos term in
a score_mod, eager / under torch.compile; the CPU has no FlexAttention backward). Expert variants:
`explicit_low_rank` (frozen logits + a rank-r correction per expert; in inference in cache-sized chunks of
(image, head) pairs, `--inference-chunks` times other chunk sizes) against `sdpa_folded`. Fuser (`--cases
fuser`): HL-Attn's cross-attention at width 256, 8 heads, `explicit` softmax against `sdpa`.
Rounds interleave the candidates (order rotated each round); the table gives medians.

    python -m samora_benchmarks.attention --device cpu --threads 1
    python -m samora_benchmarks.attention --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention
from torch.nn.attention.flex_attention import flex_attention

from samora_benchmarks.common import REPO, synchronize, write_doc_block

from samora_kit_plugins.fusion.hl_attn import attend
from samora_kit_plugins.lora.experts_qkv import ExpertsQKV
from samora_kit_plugins.sam.rel_pos_attention import (rel_pos_index, rel_pos_tables, rel_terms,
                                                       sam_attention_sdpa)
from samora_kit_plugins.sam.variant_attention import low_rank_variants_attention, variants_attention

DIM, HEADS = 768, 12  # ViT-B; SAM's windows are 14 x 14 tokens
FUSER_WIDTH, FUSER_HEADS = 256, 8  # HL-Attn's defaults
DEFAULT_BLOCKS = {"cpu": "14:8,32:2", "cuda": "14:256,32:32,64:4"}


def rel_pos_columns(attn: Attention, x: torch.Tensor):
    """x: B, H, W, C -> q, k, v (B, heads, L, hd) and q's rel-pos terms (B, heads, L, h + w)."""
    b, h, w, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, h * w, 3, HEADS, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, rel_terms(torch.matmul(q, rel_pos_tables(attn, h, w, q.dtype).t()), rel_pos_index(h, w, x.device))


def sdpa_bias(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    q, k, v, rel = rel_pos_columns(attn, x)
    bias = (rel[..., :h, None] + rel[..., None, h:]).flatten(-2)  # B, heads, L, L
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


def flex(attn: Attention, x: torch.Tensor, kernel=flex_attention) -> torch.Tensor:
    b, h, w, c = x.shape
    q, k, v, rel = rel_pos_columns(attn, x)
    rel_h, rel_w = rel[..., :h].contiguous(), rel[..., h:].contiguous()

    def add_rel_pos(score, batch, head, q_index, k_index):
        return score + rel_h[batch, head, q_index, k_index // w] + rel_w[batch, head, q_index, k_index % w]

    out = kernel(q, k, v, score_mod=add_rel_pos, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


def single_candidates(side: int, device: torch.device, train: bool, compile_flex: bool) -> dict[str, Callable]:
    attn = Attention(DIM, HEADS, use_rel_pos=True, input_size=(side, side)).to(device).requires_grad_(False)
    with torch.no_grad():
        attn.rel_pos_h.normal_(std=0.3)
        attn.rel_pos_w.normal_(std=0.3)
    found = {"explicit": attn.forward, "sdpa_bias": lambda x: sdpa_bias(attn, x),
             "sdpa_folded": lambda x: sam_attention_sdpa(attn, x)}
    if not (train and device.type == "cpu"):  # FlexAttention has no backward on the CPU
        found["flex"] = lambda x: flex(attn, x)
        if compile_flex:
            compiled = torch.compile(flex_attention, dynamic=False)
            found["flex_compiled"] = lambda x: flex(attn, x, compiled)
    return found


def expert_candidates(side: int, device: torch.device, experts: int, rank: int,
                      chunks_kib: tuple[int, ...] = ()) -> dict[str, Callable]:
    attn = Attention(DIM, HEADS, use_rel_pos=True, input_size=(side, side)).to(device).requires_grad_(False)
    qkv = ExpertsQKV(attn.qkv, [f"e{i}" for i in range(experts)], rank, ("q", "v")).to(device)
    with torch.no_grad():
        attn.rel_pos_h.normal_(std=0.3)
        attn.rel_pos_w.normal_(std=0.3)
        qkv.expert_b.normal_(std=0.3)
    hw = (side, side)
    found = {"explicit_low_rank": lambda x: low_rank_variants_attention(attn, *qkv.factored_variants(x), hw),
             "sdpa_folded": lambda x: variants_attention(attn, *qkv.variants(x, shared=True), hw)}

    for kib in chunks_kib:  # 0: every (image, head) pair in one chunk
        name = f"explicit_low_rank, {f'{kib} KiB chunks' if kib else 'one chunk'}"
        found[name] = lambda x, size=kib * 1024 or 1 << 62: low_rank_variants_attention(
            attn, *qkv.factored_variants(x), hw, chunk_bytes=size)
    return found


def fuser_candidates(width: int, heads: int) -> dict[str, Callable]:
    """HL-Attn's cross-attention (its q, k, v after their projections: x is N, L, width)."""

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], heads, width // heads).transpose(1, 2)

    return {name: (lambda x, fused=fused: attend(split(x), split(x * 0.5), split(x), None, 0.0, fused))
            for name, fused in (("explicit", False), ("sdpa", True))}


def measure(candidates: dict[str, Callable], x: torch.Tensor, train: bool, dtype: torch.dtype,
            rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per call of each candidate, and each one's first call (compilation included)."""
    device = x.device

    def call(run: Callable) -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.set_grad_enabled(train), torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
            out = run(x)
        if train:
            out.float().square().mean().backward()
        synchronize(device)
        return (time.perf_counter() - start) * 1000

    first = {name: call(run) for name, run in candidates.items()}
    for run in candidates.values():  # warm
        call(run)
    times = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(call(candidates[name]))
    return {name: statistics.median(t) for name, t in times.items()}, first


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--blocks", default=None, help="SIDE:N,... attention over SIDE x SIDE tokens, N windows or "
                   f"images per call (default: cpu {DEFAULT_BLOCKS['cpu']}, cuda {DEFAULT_BLOCKS['cuda']})")
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast, as train.amp)")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--cases", default="single,experts", help="single, experts and/or fuser")
    p.add_argument("--experts", type=int, default=3)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--inference-chunks", default="", metavar="KIB,...",
                   help="expert variants, inference: also time the explicit rank-r logits in chunks of (image, head) "
                        "pairs whose logits take this many KiB (0: one chunk of every pair), against the kit's "
                        "INFERENCE_CHUNK_BYTES")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-compile", action="store_true", help="skip flex_compiled (its compilation takes a while)")
    p.add_argument("--docs-block", default=None, help="also write the table into docs/benchmarks.md between "
                   "<!-- NAME:start --> and <!-- NAME:end -->")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    lines = [f"{machine(device)}; ms per call, median of {args.rounds} interleaved rounds "
             f"(ratio: the explicit softmax's ms / this candidate's, above 1 is faster)", "",
             "| case | tokens × calls | dtype | mode | candidate | ms | ratio | first call ms |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for case in args.cases.split(","):
        for spec in (args.blocks or DEFAULT_BLOCKS[device.type]).split(","):
            side, n = map(int, spec.split(":"))
            for dtype_name in args.dtypes.split(","):
                for mode in args.modes.split(","):
                    train = mode == "train"
                    if case == "single":
                        candidates = single_candidates(side, device, train, not args.no_compile)
                        x = torch.randn(n, side, side, DIM, device=device, requires_grad=train)
                    elif case == "experts":
                        chunks = tuple(int(c) for c in args.inference_chunks.split(",")) \
                            if args.inference_chunks and not train else ()
                        candidates = expert_candidates(side, device, args.experts, args.rank, chunks)
                        x = torch.randn(n, side * side, DIM, device=device, requires_grad=train)
                    else:
                        candidates = fuser_candidates(FUSER_WIDTH, FUSER_HEADS)
                        x = torch.randn(n, side * side, FUSER_WIDTH, device=device, requires_grad=train)
                    medians, first = measure(candidates, x, train, dtypes[dtype_name], args.rounds)
                    base = next(iter(medians.values()))
                    for name, ms in medians.items():
                        row = (f"| {case} | {side}×{side} × {n} | {dtype_name} | {mode} | {name} | {ms:.1f} | "
                               f"{base / ms:.2f} | {first[name]:.0f} |")
                        lines.append(row)
                        print(row, flush=True)
    if args.docs_block:
        command = "python -m samora_benchmarks.attention " + " ".join(
            a for a in sys.argv[1:] if not a.startswith("--docs-block") and a != args.docs_block)
        write_doc_block(REPO / "docs" / "benchmarks.md", args.docs_block, f"`{command}`\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
