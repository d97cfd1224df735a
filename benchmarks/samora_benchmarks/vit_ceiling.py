"""The ceiling for an encoder of ViT-B's size: a bare timm ViT-B/16 training step (forward, mean loss,
backward, AdamW) at the kit's batch and precision, in images/s and achieved TFLOP/s. The kit's SAMed
step (benchmarks/samora_benchmarks/train_step.py) is compared with it in benchmarks/gpu.sh.

    python -m samora_benchmarks.vit_ceiling --device cuda --batch 32 --steps 20 [--compile]
"""

from __future__ import annotations

import argparse
import timm
import torch

from samora_benchmarks.common import flops_of, report, seconds_per_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0,
                              img_size=args.image_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    forward = model

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(images).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    flops = flops_of(step)
    if args.compile:
        forward = torch.compile(model)
    seconds = seconds_per_call(step, args.steps, args.warmup, device)
    print(f"bare timm ViT-B/16 at {args.image_size} px on {device}, batch {args.batch}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {'compiled' if args.compile else 'eager'}: step "
          f"{seconds * 1000:.1f} ms | {args.batch / seconds:.1f} images/s | {flops / seconds / 1e12:.2f} TFLOP/s")
    report({"step_ms": seconds * 1000, "tflops": flops / seconds / 1e12})


if __name__ == "__main__":
    main()
