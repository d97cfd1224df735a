"""Mini-SAM (issue 11, point 2): the SAM architecture at a small config, trained as SAM was, then exported
as an official `sam_vit_*.pth` and imported with `samora-kit weights import`, so that SAMed and SAMora start
from it exactly as they start from SAM.

    python -m samora_benchmarks.world.mini_sam --encoder runs/world/source_mae/base.safetensors --out runs/world/mini_sam
    python -m samora_benchmarks.world.mini_sam --encoder ... --source scenes --steps 20 --out /tmp/mini   # a smoke run
    python -m samora_benchmarks.world.mini_sam --encoder ... --scale gpu --out runs/world-gpu/mini_sam

Stage 1 (MAE pre-training of the encoder) is benchmarks/recipes/world/source_mae.toml; this script is stage 2: image
encoder (from that file), prompt encoder and mask decoder trained together for promptable segmentation of
the source domain's instance masks, by the kit's loop (checkpoints, resume, metrics.jsonl in --out).

As SAM (Kirillov et al. 2023, appendix A): each prompt is a jittered box or one positive point drawn
uniformly from an instance; a single prompt yields 3 masks (multimask tokens) and only the lowest loss
of the 3 is back-propagated; the loss is 20 x focal + 1 x dice plus the MSE of the IoU head against each
mask's actual IoU (all 3, so the head learns to rank them). `--corrections` R rounds follow: a point drawn
uniformly from the error region (positive on a miss, negative on a false alarm) is added to the prompt,
with the previous round's low-res logits as the mask prompt, and the single-mask token answers (SAM's
fourth token, used when the prompt is not ambiguous). Decisions where the paper leaves room:
- box noise: std 10 % of the box side per coordinate, at most 20 px of a 1024-px image (2.5 px at 128);
- losses at the input resolution (low-res logits upsampled bilinearly, as SAM's postprocessing does);
- a fixed M prompts per image (instances drawn without replacement, repeated when an image has fewer),
  drawn from (seed, epoch, index), so batches collate and a resumed run sees the same prompts;
- images in [0, 1] with no pixel normalisation, as the kit's SAM backbone (and SAMed) feed them;
- one learning rate for all parts (AdamW, warm-up, cosine), no layer-wise decay at this depth.

The exported file is SAM's state dict (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`, nothing
else), written with `torch.save` as the official files are. It states its image size the way the official
one does, by its position embedding: a 1024-px file holds a 64 x 64 grid, mini-SAM's holds the grid of
the size it was trained at (8 x 8 at 128 px, read as `source_image_size` 128 by the importer). A backbone
at another size resizes the positions on load, as it does for the official 1024-px files. The decoder's
widths are the kit's SAMed decoder defaults for the encoder's embedding width (64 for "tiny"), so its
`load_pretrained` finds every tensor it keeps and re-initialises the rest (mask tokens, hypernetwork MLPs,
IoU head). Files in --out: mini_sam.pth, mini_sam.safetensors (+ .sha256), mini_sam.json (settings,
fingerprint, timings, held-out mIoU before and after); a rerun with the same settings reuses them, and an
interrupted one resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from samora_kit.api import (DistContext, STATE_FILE, SamoraError, StepCallback, TrainSection, atomic_write,
                            atomic_write_text, default_registry, fingerprint, import_checkpoint, read_header,
                            resolve_device, run_folder_lock, seed_everything, sha256_of, sidecar_digest, train)
from samora_kit_plugins.decoders.samed import IOU_HEAD_HIDDEN, MASK_IN_CHANS, default_mlp_dim, default_num_heads
from samora_kit_plugins.sam import SamBackboneConfig, build_image_encoder, build_sam_backbone

from samora_benchmarks.world.cli import add_common_flags, exit_code, preset_with_flags

REPO = Path(__file__).resolve().parents[3]
KVASIR_ROOT = REPO.parent / "shared" / "data" / "kvasir_seg"
PTH, SAFETENSORS, RECORD = "mini_sam.pth", "mini_sam.safetensors", "mini_sam.json"
TRAINING_VERSION = 1  # bump when a change here changes what the same settings train

MULTIMASK = 3  # SAM's ambiguity-aware outputs; token 0 is the single-mask output
BOX_CORNERS, POSITIVE, NEGATIVE, NOT_A_POINT = (2, 3), 1, 0, -1  # SAM's point labels; boxes are corners 2, 3
BOX_NOISE, BOX_NOISE_MAX = 0.1, 20 / 1024  # std: 10 % of the side; at most 20 px of a 1024-px image
FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


# ---- prompts, drawn with the data -------------------------------------------------------------------

def choose_instances(rng: np.random.Generator, available: int, wanted: int) -> np.ndarray:
    """`wanted` instance indices: distinct while there are enough, every one used before any repeats."""
    order = rng.permutation(available)
    if available >= wanted:
        return order[:wanted]
    return np.concatenate([order, rng.integers(available, size=wanted - available)])


def sample_prompt(rng: np.random.Generator, mask: np.ndarray, box_probability: float) -> tuple[np.ndarray, np.ndarray]:
    """SAM's first prompt for one S,S mask: its box with noise, or one point inside it, as two point
    tokens (coords 2,2 as x,y pixels; labels 2) so that every prompt has the same shape."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    if rng.random() < box_probability:
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)  # x0, y0, x1, y1
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
        noise = np.clip(rng.normal(0.0, BOX_NOISE * side), -BOX_NOISE_MAX * size, BOX_NOISE_MAX * size)
        x0, y0, x1, y1 = np.clip(box + noise, 0, size - 1)
        corners = [[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]]
        return np.array(corners, dtype=np.float32), np.array(BOX_CORNERS, dtype=np.int64)
    pick = rng.integers(len(xs))
    point = [[xs[pick], ys[pick]], [0, 0]]
    return np.array(point, dtype=np.float32), np.array([POSITIVE, NOT_A_POINT], dtype=np.int64)


class PromptedInstances(Dataset):
    """An InstanceSource's items with M prompts each, item i a pure function of (seed, epoch, i):
    (image 3,S,S float, masks M,S,S bool, coords M,2,2 float (x, y px), labels M,2 long,
    draws M,R float in [0, 1): where each correction round's point falls in its error region)."""

    def __init__(self, instances: Dataset, prompts_per_image: int, corrections: int, seed: int,
                 box_probability: float = 0.5):
        self.instances, self.prompts, self.corrections = instances, prompts_per_image, corrections
        self.seed, self.box_probability, self.epoch = seed, box_probability, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int):
        image, masks = self.instances[index]  # 3,S,S ; N,S,S
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = masks[torch.from_numpy(choose_instances(rng, len(masks), self.prompts))]  # M, S, S
        prompts = [sample_prompt(rng, m, self.box_probability) for m in chosen.numpy()]
        coords = torch.from_numpy(np.stack([c for c, _ in prompts]))
        labels = torch.from_numpy(np.stack([lab for _, lab in prompts]))
        draws = torch.from_numpy(rng.random((self.prompts, self.corrections), dtype=np.float32))
        return image, chosen, coords, labels, draws


# ---- SAM's parts, batched over prompts, and SAM's losses ---------------------------------------------

def build_prompt_encoder(channels: int, grid: int, image_size: int) -> PromptEncoder:
    return PromptEncoder(embed_dim=channels, image_embedding_size=(grid, grid),
                         input_image_size=(image_size, image_size), mask_in_chans=MASK_IN_CHANS)


def build_mask_decoder(channels: int) -> MaskDecoder:
    """SAM's decoder at the widths the kit's SAMed decoder uses for `channels` (so it loads this one)."""
    transformer = TwoWayTransformer(depth=2, embedding_dim=channels, mlp_dim=default_mlp_dim(channels),
                                    num_heads=default_num_heads(channels))
    return MaskDecoder(transformer_dim=channels, transformer=transformer, num_multimask_outputs=MULTIMASK,
                       iou_head_depth=3, iou_head_hidden_dim=IOU_HEAD_HIDDEN)


def embed_prompts(encoder: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """coords P,T,2 (x, y px), labels P,T -> sparse embeddings P,T,C: SAM's `_embed_points` and
    `_embed_boxes` at once (box corners are labels 2 and 3), so points and boxes share a batch."""
    embedding = encoder.pe_layer.forward_with_coords(coords + 0.5, encoder.input_image_size)  # pixel centres
    embedding = torch.where((labels == NOT_A_POINT)[..., None], encoder.not_a_point_embed.weight, embedding)
    for label, learned in enumerate(encoder.point_embeddings):
        embedding = embedding + (labels == label)[..., None] * learned.weight
    return embedding


def predict_masks(decoder: MaskDecoder, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                  dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's `MaskDecoder.predict_masks` with one image embedding per prompt (image P,C,g,g; SAM's repeats
    one image's): low-res logits P,4,4g,4g and predicted IoUs P,4 (index 0: the single-mask token)."""
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)  # 1+4, C
    tokens = torch.cat([tokens.expand(len(sparse), -1, -1), sparse], dim=1)  # P, 5+T, C
    p, c, g, _ = image.shape
    hs, src = decoder.transformer(image + dense, image_pe.expand(p, -1, -1, -1), tokens)  # P,5+T,C ; P,g*g,C
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(p, c, g, g))  # P, C/8, 4g, 4g
    hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    masks = (hyper @ upscaled.flatten(2)).view(p, -1, *upscaled.shape[-2:])  # P, 4, 4g, 4g
    return masks, decoder.iou_prediction_head(hs[:, 0])


def focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss (alpha 0.25, gamma 2) per mask: P,K,S,S logits vs P,1,S,S {0,1} -> P,K."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per mask: P,K,S,S logits vs P,1,S,S -> P,K."""
    p = torch.sigmoid(logits)
    overlap = (p * targets).sum(dim=(-2, -1))
    return 1 - (2 * overlap + 1) / (p.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) + 1)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each thresholded mask with its target: P,K,S,S vs P,1,S,S -> P,K."""
    predicted, wanted = logits > 0, targets > 0.5
    union = (predicted | wanted).sum(dim=(-2, -1)).clamp(min=1)
    return (predicted & wanted).sum(dim=(-2, -1)) / union


def best_of(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt, the lowest of its K mask losses and its index (P,K -> P, P): SAM back-propagates only it."""
    value, index = losses.min(dim=1)
    return value, index


def correction_points(predicted: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per prompt drawn uniformly from the error region (predicted P,S,S vs targets P,S,S bool;
    draws P in [0, 1) pick which error pixel): coords P,1,2 (x, y), labels P,1: positive on a missed pixel,
    negative on a false alarm, "not a point" where the prediction is already exact."""
    size = targets.shape[-1]
    error = (predicted ^ targets).flatten(1)  # P, S*S
    count = error.sum(dim=1)
    rank = torch.minimum((draws * count).long(), count - 1)  # which error pixel, 0-based
    flat = (error.cumsum(dim=1) <= rank[:, None]).sum(dim=1).clamp(max=size * size - 1)
    labels = targets.flatten(1).gather(1, flat[:, None]).long()  # 1: a miss (positive click), 0: a false alarm
    labels = torch.where(count[:, None] > 0, labels, torch.full_like(labels, NOT_A_POINT))
    coords = torch.stack([flat % size, flat // size], dim=-1).float()[:, None]  # P, 1, 2
    return coords, labels


class PromptableSam(nn.Module):
    """SAM's image encoder (the kit's SAM backbone, every weight trained), prompt encoder and mask
    decoder; `forward(*batch of PromptedInstances)` -> SAM's losses over the first prompt and the
    correction rounds, with the IoU of the kept masks (`iou_first`, `iou_last`) to watch."""

    def __init__(self, backbone: nn.Module, corrections: int = 0):
        super().__init__()
        self.backbone, self.corrections = backbone, corrections
        backbone.train_whole_encoder()
        channels, grid, size = backbone.embed_channels, backbone.embed_grid, backbone.image_size
        self.prompt_encoder = build_prompt_encoder(channels, grid, size)
        self.mask_decoder = build_mask_decoder(channels)

    def decode(self, embeddings: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
               mask_prompt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings P,C,g,g (one per prompt), prompts P,T -> low-res logits P,4,4g,4g, IoUs P,4."""
        if mask_prompt is None:
            dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        else:
            dense = self.prompt_encoder.mask_downscaling(mask_prompt)  # P, C, g, g
        sparse = embed_prompts(self.prompt_encoder, coords, labels)
        return predict_masks(self.mask_decoder, embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)

    def per_prompt_embeddings(self, images: torch.Tensor, prompts: int) -> torch.Tensor:
        return self.backbone(images).repeat_interleave(prompts, dim=0)  # B*M, C, g, g

    def forward(self, images, masks, coords, labels, draws) -> dict[str, torch.Tensor]:
        b, m = masks.shape[:2]
        size = images.shape[-1]
        embeddings = self.per_prompt_embeddings(images, m)
        targets = masks.flatten(0, 1)[:, None].float()  # P, 1, S, S
        coords, labels, draws = coords.flatten(0, 1).float(), labels.flatten(0, 1), draws.flatten(0, 1)
        mask_prompt, rounds = None, []
        for r in range(1 + self.corrections):
            low_res, iou_pred = self.decode(embeddings, coords, labels, mask_prompt)
            chosen = slice(1, None) if r == 0 else slice(0, 1)  # 3 masks for one prompt, then the single one
            low_res, iou_pred = low_res[:, chosen].float(), iou_pred[:, chosen].float()
            logits = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
            focal, dice = focal_loss(logits, targets), dice_loss(logits, targets)
            kept, index = best_of(FOCAL_WEIGHT * focal + DICE_WEIGHT * dice)
            iou = mask_iou(logits.detach(), targets)
            iou_mse = F.mse_loss(iou_pred, iou)
            pick = index[:, None]
            rounds.append({"loss": kept.mean() + IOU_WEIGHT * iou_mse, "focal": focal.gather(1, pick).mean(),
                           "dice": dice.gather(1, pick).mean(), "iou_mse": iou_mse,
                           "iou": iou.gather(1, pick).mean()})
            if r < self.corrections:
                with torch.no_grad():
                    predicted = logits.gather(1, pick[..., None, None].expand(-1, 1, size, size))[:, 0] > 0
                    point, label = correction_points(predicted, targets[:, 0] > 0.5, draws[:, r])
                coords, labels = torch.cat([coords, point], dim=1), torch.cat([labels, label], dim=1)
                mask_prompt = low_res.gather(1, pick[..., None, None].expand(-1, 1, *low_res.shape[-2:])).detach()
        out = {key: torch.stack([r[key] for r in rounds]).mean() for key in ("loss", "focal", "dice", "iou_mse")}
        return {**out, "iou_first": rounds[0]["iou"], "iou_last": rounds[-1]["iou"]}

    @torch.no_grad()
    def segment(self, images: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM's inference with one prompt each (B,M,T): the multimask output the IoU head ranks first
        -> logits B,M,S,S, plus the best of the 3 (an oracle) -> B,M,S,S; both at the input size."""
        b, m = coords.shape[:2]
        size = images.shape[-1]
        low_res, iou_pred = self.decode(self.per_prompt_embeddings(images, m), coords.flatten(0, 1).float(),
                                        labels.flatten(0, 1), None)
        logits = F.interpolate(low_res[:, 1:].float(), size=(size, size), mode="bilinear", align_corners=False)
        ranked = logits.gather(1, iou_pred[:, 1:].argmax(dim=1)[:, None, None, None].expand(-1, 1, size, size))
        return ranked.view(b, m, size, size), logits.view(b, m, MULTIMASK, size, size)

    def sam_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model in segment-anything's official key layout (what `sam_vit_b_01ec64.pth` holds)."""
        state = dict(self.backbone.encoder_state_in_official_layout())
        for prefix, part in (("prompt_encoder.", self.prompt_encoder), ("mask_decoder.", self.mask_decoder)):
            state.update({prefix + k: v.detach() for k, v in part.state_dict().items()})
        return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}


def build_promptable_sam(encoder: Path | None, variant: str, image_size: int, corrections: int) -> PromptableSam:
    """The mini-SAM to train: the encoder from `encoder` (a kit-pre-trained "sam-encoder" or any SAM
    file; None: random) at `image_size`, positions resized as the backbone does, no LoRA."""
    backbone = build_sam_backbone(SamBackboneConfig(variant=variant, image_size=image_size, checkpoint=encoder,
                                                    lora={"blocks": []}))
    return PromptableSam(backbone, corrections)


# ---- the official file, and its import ----------------------------------------------------------------

def export_official(model: PromptableSam, path: Path) -> dict[str, torch.Tensor]:
    """Write `model` as segment-anything's own checkpoint (torch.save of `Sam.state_dict()`); the state
    is loaded into a `Sam` first, strictly, so the file holds exactly the official keys."""
    state = model.sam_state_dict()
    backbone = model.backbone
    with torch.device("meta"):
        official = Sam(build_image_encoder(backbone.variant, backbone.image_size),
                       build_prompt_encoder(backbone.embed_channels, backbone.embed_grid, backbone.image_size),
                       build_mask_decoder(backbone.embed_channels))
    official.load_state_dict(state, strict=True, assign=True)  # every key and shape, nothing else
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return state


def import_official(pth: Path, out: Path, variant: str) -> tuple[Path, str]:
    """`samora-kit weights import PTH OUT --variant VARIANT`, as for an official SAM file."""
    return import_checkpoint(pth, out, variant=variant)


@torch.no_grad()
def held_out_miou(model: PromptableSam, instances: Dataset, prompts: int, seed: int, device: torch.device,
                  batch_size: int = 16) -> dict[str, float]:
    """Mean IoU on held-out images for a box and for one point: of the mask the IoU head ranks first, and
    of the best of the 3 (oracle, SAM's own metric for ambiguous points)."""
    model.eval()
    scores = {}
    for name, box_probability in (("box", 1.0), ("point", 0.0)):
        data = PromptedInstances(instances, prompts, 0, seed, box_probability)
        ranked_iou, oracle_iou = [], []
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            images, masks, coords, labels, _ = (torch.stack(t).to(device) for t in zip(*items))
            ranked, all_three = model.segment(images, coords, labels)
            targets = masks.flatten(0, 1)[:, None].float()
            ranked_iou.append(mask_iou(ranked.flatten(0, 1)[:, None], targets)[:, 0])
            oracle_iou.append(mask_iou(all_three.flatten(0, 1), targets).max(dim=1).values)
        scores[f"{name}_miou"] = float(torch.cat(ranked_iou).mean())
        scores[f"{name}_oracle_miou"] = float(torch.cat(oracle_iou).mean())
    model.train()
    return scores


# ---- settings, data, the CLI ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    source: str = "both"  # scenes | kvasir_seg | both
    image_size: int | None = None  # None: the size the encoder file states
    steps: int = 4000
    batch_size: int = 8  # images per step
    prompts_per_image: int = 8
    corrections: int = 1  # correction rounds after the first prompt
    box_probability: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    num_scenes: int = 4096
    scenes_seed: int = 0  # source_mae.toml's scenes: SAM's encoder and decoder saw the same images
    eval_images: int = 64  # held out, per source
    seed: int = 1234
    num_workers: int = 0
    checkpoint_every: int = 100  # steps


SPEED_ONLY = ("num_workers", "checkpoint_every")  # settings that leave the weights as they are: not fingerprinted


PRESETS = {
    "cpu": Settings(),  # its held-out figures and time: docs/benchmarks.md, "The world's build"
    "gpu": Settings(steps=8000, batch_size=32, prompts_per_image=16, corrections=2, lr=8e-4, num_scenes=65536,
                    eval_images=256, num_workers=6),
}
SOURCES = ("scenes", "kvasir_seg", "both")


def source_datasets(settings: Settings, image_size: int, kvasir_root: Path) -> tuple[Dataset, dict[str, Dataset], dict]:
    """(training instances, held-out instances per source, what the data is) of `settings.source`."""
    registry = default_registry()
    scenes_spec, kvasir_spec = registry.get("dataset", "scenes"), registry.get("dataset", "kvasir_seg")
    train_parts, held_out, described = [], {}, {}
    if settings.source in ("scenes", "both"):
        config = scenes_spec.config_model.model_validate(
            {"num_images": settings.num_scenes, "seed": settings.scenes_seed})
        train_parts.append(scenes_spec.build(config).instance_dataset(image_size))
        unseen = config.model_copy(update={"num_images": settings.eval_images, "seed": settings.scenes_seed + 1})
        held_out["scenes"] = scenes_spec.build(unseen).instance_dataset(image_size)
        described["scenes"] = config.model_dump(mode="json")
    if settings.source in ("kvasir_seg", "both"):
        def kvasir(cases: list[str] | None = None):
            selection = {} if cases is None else {"train": {"cases": cases}}
            return kvasir_spec.build(kvasir_spec.config_model.model_validate({"root": kvasir_root, **selection}))

        test = sorted(json.loads((kvasir_root / "split.json").read_text())["test"])
        training = [case for case in kvasir().cases("train") if case not in set(test)]  # test images stay unseen
        train_parts.append(kvasir(training).instance_dataset(image_size))
        held_out["kvasir_seg"] = kvasir(test[:settings.eval_images]).instance_dataset(image_size)
        described["kvasir_seg"] = {"root": kvasir_root.name, "train_images": len(training),
                                   "sha256sums": sha256_of(kvasir_root / "SHA256SUMS")}
    if not train_parts:
        raise SamoraError(f"--source {settings.source!r}: expected one of {', '.join(SOURCES)}")
    return ConcatDataset(train_parts), held_out, described


def build_mini_sam(settings: Settings, encoder: Path, out: Path, *, kvasir_root: Path = KVASIR_ROOT,
                   device: torch.device = torch.device("cpu"), show_progress: bool = True,
                   step_callbacks: Sequence[StepCallback] = ()) -> dict:
    """Train (or resume, or reuse) the mini-SAM in `out`; return its record (mini_sam.json). The training
    loop calls `step_callbacks` after every step."""
    header = read_header(encoder)
    variant, image_size = header.get("variant", "tiny"), settings.image_size or header.get("source_image_size")
    if image_size is None:
        raise SamoraError(f"{encoder}: its header states no source_image_size; give --image-size")
    instances, held_out, data = source_datasets(settings, image_size, kvasir_root)
    stated = {k: v for k, v in dataclasses.asdict(settings).items() if k not in SPEED_ONLY}
    inputs = {"settings": {**stated, "image_size": image_size}, "encoder_sha256": sha256_of(encoder),
              "variant": variant, "data": data, "training_version": TRAINING_VERSION}
    digest = fingerprint(inputs)
    record_path, pth, weights = out / RECORD, out / PTH, out / SAFETENSORS
    with run_folder_lock(out):
        old = json.loads(record_path.read_text()) if record_path.is_file() else None
        if old is not None and old["fingerprint"] != digest:
            raise SamoraError(f"{out} holds a mini-SAM of other settings (fingerprint {old['fingerprint']}, "
                              f"these {digest}); choose another --out or remove it")
        if old is not None and old.get("status") == "done" and weights.is_file() \
                and sidecar_digest(weights) == old["sha256"]:
            return old
        resume = old is not None and (out / STATE_FILE).is_file()
        seed_everything(settings.seed)
        model = build_promptable_sam(encoder, variant, image_size, settings.corrections).to(device)
        before = old["held_out_before"] if resume else {
            name: held_out_miou(model, data_set, settings.prompts_per_image, settings.seed, device)
            for name, data_set in held_out.items()}
        record = {**inputs, "fingerprint": digest, "encoder": str(encoder), "status": "training",
                  "held_out_before": before}
        atomic_write_text(record_path, json.dumps(record, indent=1))
        dataset = PromptedInstances(instances, settings.prompts_per_image, settings.corrections, settings.seed,
                                    settings.box_probability)
        train_cfg = TrainSection(epochs=-(-settings.steps * settings.batch_size // len(dataset)),
                                 batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay,
                                 warmup=settings.warmup, schedule="cosine", max_steps=settings.steps,
                                 checkpoint_every=settings.checkpoint_every, log_every=10, num_workers=settings.num_workers)
        started = time.perf_counter()
        result = train(model, dataset, train_cfg, settings.seed, out, DistContext(device=device), resume,
                       {"stage": "mini-sam"}, show_progress, step_callbacks=step_callbacks)
        seconds = time.perf_counter() - started
        after = {name: held_out_miou(model, data_set, settings.prompts_per_image, settings.seed, device)
                 for name, data_set in held_out.items()}
        export_official(model, pth)
        _, sha = import_official(pth, weights, variant)
        per_step = None if resume else round(seconds / max(result.steps, 1), 3)  # a resumed run timed a part
        record |= {"status": "done", "steps": result.steps, "final_loss": result.final_loss,
                   "train_seconds": round(seconds, 1), "seconds_per_step": per_step,
                   "resumed": resume, "held_out_after": after,
                   "pth": PTH, "safetensors": SAFETENSORS, "sha256": sha, "device": str(device)}
        atomic_write_text(record_path, json.dumps(record, indent=1))
    return record


def parse_args(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", type=Path, required=True,
                   help="the MAE-pre-trained encoder (benchmarks/recipes/world/source_mae.toml writes base.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="folder for mini_sam.pth/.safetensors/.json and the run")
    add_common_flags(p, PRESETS, SOURCES, KVASIR_ROOT)
    p.add_argument("--image-size", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--prompts", type=int, dest="prompts_per_image", help="prompts (instances) per image")
    p.add_argument("--corrections", type=int, help="correction rounds after the first prompt")
    p.add_argument("--lr", type=float)
    args = p.parse_args(argv)
    return preset_with_flags(PRESETS, args), args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(sys.argv[1:] if argv is None else argv)

    def build() -> None:
        record = build_mini_sam(settings, args.encoder, args.out, kvasir_root=args.kvasir_root,
                                device=resolve_device(args.device))
        print(json.dumps({k: record.get(k) for k in ("fingerprint", "steps", "final_loss", "train_seconds",
                                                      "seconds_per_step", "held_out_before", "held_out_after")},
                         indent=1))
        print(f"mini-SAM: {args.out / PTH} -> {args.out / SAFETENSORS} (sha256 {record['sha256']})")

    return exit_code(build)


if __name__ == "__main__":
    sys.exit(main())
