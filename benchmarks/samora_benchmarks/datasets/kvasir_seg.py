"""Kvasir-SEG read in place: 1000 RGB colonoscopy images with polyp masks, a source domain no target
comes from (issue 11). Nothing is copied; `root` names the folder of the official release:
`images/<id>.jpg` and `masks/<id>.jpg` (3-channel JPEG: polyp where the grey value > 127).

Three views of the `train` cases (every image unless a selection narrows them):
- `load_case(id)`: a 2D Volume at native size (1,H,W luminance in [0, 1]; label 0 background, 1 polyp),
  so it is an ordinary DatasetAdapter too;
- `slice_dataset(S)`: RGB images 3,S,S in [0, 1] for self-supervised pre-training (masks are not read);
- `instance_dataset(S)`: (image 3,S,S, masks N,S,S bool) for promptable training, one instance per
  connected polyp (8-connectivity) of at least `min_instance_area` of the image (the largest when none is).
Images are fitted to S x S by `fit`: "letterbox" as SAM does (longest side to S, zeros right and below)
or "stretch". A mask is resized as a picture and thresholded at half, so it stays binary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from samora_kit.api import CaseSelection, ComponentConfig, DataError, Volume, did_you_mean

from samora_kit_plugins.datasets.common import SplitCases, existing_dir
from .instances import IndexedItems, as_instance_item, as_tensor_image, instance_masks, luminance, min_pixels

if TYPE_CHECKING:  # PIL and scipy are slow to import: only where pictures are read
    from PIL import Image

NAME = "kvasir_seg"
MASK_THRESHOLD = 127  # the README's rule: polyp where grey > 127
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
EXAMPLE = {"root": "../shared/data/kvasir_seg"}


class KvasirSegConfig(ComponentConfig):
    root: Path                          # the folder holding images/, masks/ (and split.json)
    train: CaseSelection | None = None  # ids are image stems; None: every image
    test: CaseSelection | None = None   # None: no test cases (a source domain is only trained on)
    fit: Literal["letterbox", "stretch"] = "letterbox"
    instances: Literal["components", "union"] = "components"  # union: the whole mask is one instance
    min_instance_area: float = Field(default=0.001, ge=0.0, lt=1.0)  # fraction of the S x S image


class KvasirSeg(SplitCases):
    """Polyp images and masks; case ids are the file stems."""

    num_classes = 1

    def __init__(self, config: KvasirSegConfig):
        self.config = config
        self.class_names = ["polyp"]
        self.root = existing_dir(config.root, "the Kvasir-SEG folder (images/, masks/)")
        images = existing_dir(self.root / "images", f"the images/ folder of {self.root}")
        ids = sorted(p.stem for p in images.glob("*.jpg") if not p.name.startswith("."))
        if not ids:
            raise DataError(f"{images}: no .jpg images")
        splits = {"train": config.train.resolve(ids, self.root) if config.train else ids,
                  "test": config.test.resolve(ids, self.root) if config.test else []}
        missing = [case for case in dict.fromkeys(splits["train"] + splits["test"]) if not self.mask_path(case).is_file()]
        if missing:
            raise DataError(f"{self.root / 'masks'}: no mask for {len(missing)} selected image(s), "
                            f"e.g. {missing[0]}.jpg")
        super().__init__(splits)
        self.ids = ids

    def image_path(self, case_id: str) -> Path:
        return self.root / "images" / f"{case_id}.jpg"

    def mask_path(self, case_id: str) -> Path:
        return self.root / "masks" / f"{case_id}.jpg"

    def load_case(self, case_id: str) -> Volume:
        if case_id not in self.ids:
            raise DataError(f"{self.root}: no image {case_id!r}{did_you_mean(case_id, self.ids)}")
        with _open(self.image_path(case_id)) as picture:
            rgb = np.asarray(_decoded(picture, "RGB"), dtype=np.float32) / 255.0  # H, W, 3
        with _open(self.mask_path(case_id)) as picture:
            mask = np.asarray(_decoded(picture, "L")) > MASK_THRESHOLD
        if mask.shape != rgb.shape[:2]:
            raise DataError(f"{self.mask_path(case_id)}: mask of {mask.shape} for an image of {rgb.shape[:2]}")
        return Volume(case_id=case_id, image=luminance(rgb)[None], label=mask[None].astype(np.int64),
                      source=str(self.image_path(case_id)), meta={"colour": "RGB read as luminance"})

    def slice_dataset(self, image_size: int) -> IndexedItems:
        """RGB images 3,S,S in [0, 1] of the train cases, for self-supervised pre-training."""
        return IndexedItems(len(self._splits["train"]), image_size, self._image_item)

    def instance_dataset(self, image_size: int) -> IndexedItems:
        """(image 3,S,S float32 in [0, 1], masks N,S,S bool, N >= 1) of the train cases."""
        return IndexedItems(len(self._splits["train"]), image_size, self._instance_item)

    def fitted_image(self, case_id: str, image_size: int) -> np.ndarray:
        """S,S,3 uint8, fitted as `config.fit` says."""
        return self._fitted(self.image_path(case_id), "RGB", image_size)

    def fitted_instances(self, case_id: str, image_size: int) -> np.ndarray:
        """N,S,S bool, N >= 1: the polyps of a case at the fitted size."""
        grey = self._fitted(self.mask_path(case_id), "L", image_size)  # binarised, then resized: threshold again
        mask = grey > MASK_THRESHOLD
        if not mask.any():
            raise DataError(f"{self.mask_path(case_id)}: no polyp pixel is left at {image_size} px")
        if self.config.instances == "union":
            return mask[None]
        from scipy import ndimage

        labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
        masks = instance_masks(labels, min_pixels(self.config.min_instance_area, image_size))
        if not len(masks):  # every polyp is small at this size: keep the largest rather than none
            masks = labels[None] == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        return masks

    def _image_item(self, i: int, image_size: int):
        return as_tensor_image(self.fitted_image(self._splits["train"][i], image_size))

    def _instance_item(self, i: int, image_size: int):
        case = self._splits["train"][i]
        return as_instance_item(self.fitted_image(case, image_size), self.fitted_instances(case, image_size))

    def _fitted(self, path: Path, mode: str, image_size: int) -> np.ndarray:
        from PIL import Image

        with _open(path) as picture:
            width, height = picture.size
            if self.config.fit == "stretch":
                size = (image_size, image_size)
            else:
                scale = image_size / max(width, height)
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
            picture.draft(mode, size)  # JPEG: decode at the smallest DCT scale not below the target
            decoded = _decoded(picture, mode, path)
            if mode == "L":  # a mask: binarise at the decoded size, then resize the 0/255 picture
                decoded = decoded.point(lambda v: 255 if v > MASK_THRESHOLD else 0)
            resized = np.asarray(decoded.resize(size, Image.Resampling.BILINEAR))
        fitted = np.zeros((image_size, image_size, *resized.shape[2:]), dtype=np.uint8)
        fitted[: size[1], : size[0]] = resized
        return fitted


def build_kvasir_seg(config: KvasirSegConfig) -> KvasirSeg:
    """Kvasir-SEG polyp images read in place: RGB source images, polyp instance masks."""
    return KvasirSeg(config)


def _open(path: Path) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image file ({type(exc).__name__}: {exc})") from None


def _decoded(picture: Image.Image, mode: str, path: Path | None = None) -> Image.Image:
    try:
        return picture.convert(mode)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path or picture.filename}: unreadable or truncated image file "
                        f"({type(exc).__name__}: {exc})") from None
