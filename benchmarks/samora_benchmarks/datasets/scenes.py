"""Scenes: "segment everything" pictures generated on the fly, the synthetic half of issue 11's source domain.

A scene is a textured background with overlapping shapes (ellipses, polygons, smooth blobs) painted back
to front, larger ones first, each filled with a texture (flat, gradient, stripes, value noise), then
blurred and given Gaussian pixel noise. Its instances are the shapes' visible regions after occlusion,
so they are disjoint; an instance smaller than `min_area` of the image (or fully hidden) is dropped.

Scene i is a pure function of (seed, i): every random choice is drawn from a generator seeded by both,
in image-relative units and before anything that depends on the pixel count, so one scene rendered at
64 and at 256 px shows the same shapes (only the pixel noise differs). `num_images` is the dataset's
length; `image_size` is the size `load_case` renders at, while `slice_dataset(S)` and
`instance_dataset(S)` render at the S they are asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import numpy as np
from pydantic import Field, field_validator

from samora_kit.api import ComponentConfig, DataError, Volume

from samora_kit_plugins.datasets.common import SplitCases
from .instances import IndexedItems, as_instance_item, as_tensor_image, instance_masks, luminance, min_pixels

NAME = "scenes"
ShapeKind = Literal["ellipse", "polygon", "blob"]
TextureKind = Literal["flat", "gradient", "stripes", "noise"]
ATTEMPTS = 16  # redraws (seeded by the attempt too) of a scene whose every instance was dropped
EXAMPLE = {"num_images": 8, "image_size": 64, "shapes_per_image": (3, 6)}
NonNegative = Annotated[float, Field(ge=0.0)]
Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (y h,1; x 1,w), image-relative -> h,w in [0, 1]
Region = Callable[[np.ndarray, np.ndarray], np.ndarray]   # (y h,1; x 1,w) -> h,w bool


class ScenesConfig(ComponentConfig):
    num_images: int = Field(default=1000, ge=1)
    image_size: int = Field(default=128, ge=16)  # load_case's size
    seed: int = Field(default=0, ge=0)
    shapes_per_image: tuple[int, int] = (6, 16)  # inclusive range, drawn per scene
    shape_size: tuple[NonNegative, NonNegative] = (0.05, 0.3)  # radius as a fraction of the side, log-uniform
    shape_kinds: list[ShapeKind] = Field(default_factory=lambda: ["ellipse", "polygon", "blob"], min_length=1)
    textures: list[TextureKind] = Field(default_factory=lambda: ["flat", "gradient", "stripes", "noise"],
                                        min_length=1)
    min_area: float = Field(default=0.002, ge=0.0, lt=1.0)  # of the S x S image, visible pixels per instance
    noise_std: tuple[NonNegative, NonNegative] = (0.0, 0.05)  # Gaussian pixel noise, per scene
    blur: tuple[NonNegative, NonNegative] = (0.0, 0.006)  # Gaussian blur sigma, a fraction of the side

    @field_validator("shapes_per_image", "shape_size", "noise_std", "blur")
    @classmethod
    def _ordered_range(cls, pair, info):
        if not pair[0] <= pair[1]:
            raise ValueError(f"{info.field_name} must be (low, high) with low <= high, got {pair}")
        if info.field_name == "shapes_per_image" and pair[0] < 1:
            raise ValueError(f"shapes_per_image must start at 1 or more, got {pair}")
        if info.field_name == "shape_size" and not 0.0 < pair[0] <= pair[1] <= 1.0:
            raise ValueError(f"shape_size must lie in (0, 1], got {pair}")
        return pair


@dataclass(frozen=True)
class Fill:
    low: np.ndarray   # 3: RGB where the pattern is 0
    high: np.ndarray  # 3: RGB where it is 1
    pattern: Pattern

    def colours(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.low + (self.high - self.low) * self.pattern(y, x)[..., None]  # h, w, 3


@dataclass(frozen=True)
class Shape:
    centre: tuple[float, float]  # y, x
    extent: float                # no point of the region lies farther than this from the centre
    region: Region
    fill: Fill


@dataclass(frozen=True)
class Scene:
    background: Fill
    shapes: list[Shape]  # back to front
    blur: float          # sigma, a fraction of the side
    noise_std: float
    noise_seed: int


class Scenes(SplitCases):
    """`num_images` generated scenes; case ids `scene_000000`, ... are all "train", "test" is empty."""

    num_classes = 0

    def __init__(self, config: ScenesConfig):
        self.config = config
        self.class_names: list[str] = []
        super().__init__({"train": [case_id(i) for i in range(config.num_images)], "test": []})

    def scene(self, index: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(image S,S,3 float32 in [0, 1], instance masks N,S,S bool with N >= 1) of scene `index`."""
        if not 0 <= index < self.config.num_images:
            raise DataError(f"scene {index} does not exist: num_images = {self.config.num_images}")
        for attempt in range(ATTEMPTS):
            rng = np.random.default_rng([self.config.seed, index, attempt])
            image, labels = render(draw_scene(rng, self.config), image_size)
            masks = instance_masks(labels, min_pixels(self.config.min_area, image_size))
            if len(masks):
                return image, masks
        raise DataError(f"scene {index}: every instance was below min_area = {self.config.min_area} at "
                        f"{image_size} px in {ATTEMPTS} draws; lower min_area or raise shape_size")

    def load_case(self, case: str) -> Volume:
        image, masks = self.scene(index_of(case), self.config.image_size)
        return Volume(case_id=case, image=luminance(image)[None], source=f"scenes seed {self.config.seed}",
                      meta={"instances": len(masks), "colour": "RGB read as luminance"})

    def slice_dataset(self, image_size: int) -> IndexedItems:
        """RGB scenes 3,S,S in [0, 1], for self-supervised pre-training."""
        return IndexedItems(self.config.num_images, image_size, self._image_item)

    def instance_dataset(self, image_size: int) -> IndexedItems:
        """(image 3,S,S float32 in [0, 1], masks N,S,S bool, N >= 1, visible regions disjoint)."""
        return IndexedItems(self.config.num_images, image_size, self._instance_item)

    def _image_item(self, index: int, image_size: int):
        return as_tensor_image(self.scene(index, image_size)[0])

    def _instance_item(self, index: int, image_size: int):
        return as_instance_item(*self.scene(index, image_size))


def build_scenes(config: ScenesConfig) -> Scenes:
    """Generated "segment everything" scenes: textured overlapping shapes, many instance masks each."""
    return Scenes(config)


def case_id(index: int) -> str:
    return f"scene_{index:06d}"


def index_of(case: str) -> int:
    prefix, _, number = case.partition("_")
    if prefix != "scene" or not number.isdigit():
        raise DataError(f"{case!r} is not a scene id; ids look like {case_id(0)!r}")
    return int(number)


# ---- drawing: every random choice, in image-relative units -------------------------------------------

def draw_scene(rng: np.random.Generator, config: ScenesConfig) -> Scene:
    background = draw_fill(rng, config.textures, (0.5, 0.5), 0.5)
    count = int(rng.integers(config.shapes_per_image[0], config.shapes_per_image[1] + 1))
    low, high = np.log(config.shape_size)
    radii = np.sort(np.exp(rng.uniform(low, high, count)))[::-1].tolist()  # larger shapes further back
    shapes = []
    for radius in radii:
        centre = (float(rng.uniform()), float(rng.uniform()))
        region, extent = DRAW_REGION[config.shape_kinds[rng.integers(len(config.shape_kinds))]](rng, centre, radius)
        shapes.append(Shape(centre, extent, region, draw_fill(rng, config.textures, centre, radius)))
    return Scene(background, shapes, blur=float(rng.uniform(*config.blur)),
                 noise_std=float(rng.uniform(*config.noise_std)), noise_seed=int(rng.integers(2**63)))


def draw_fill(rng: np.random.Generator, textures: list[str], centre: tuple[float, float], radius: float) -> Fill:
    low = rng.uniform(0.0, 1.0, 3)
    high = np.clip(low + rng.normal(0.0, rng.uniform(0.15, 0.5), 3), 0.0, 1.0)
    kind = textures[rng.integers(len(textures))]
    angle = rng.uniform(0.0, np.pi)
    dy, dx = float(np.sin(angle)), float(np.cos(angle))
    if kind == "flat":
        pattern = _flat
    elif kind == "gradient":
        cy, cx = centre
        pattern = _gradient(cy, cx, dy, dx, radius)
    elif kind == "stripes":
        pattern = _stripes(dy, dx, float(rng.uniform(3.0, 16.0)), float(rng.uniform(0.0, 2 * np.pi)),
                           bool(rng.integers(2)))
    else:
        cells = int(rng.integers(3, 12))
        pattern = _value_noise([rng.uniform(0.0, 1.0, (n + 1, n + 1)).astype(np.float32) for n in (cells, 2 * cells)])
    return Fill(low.astype(np.float32), high.astype(np.float32), pattern)


def _flat(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.float32)


def _gradient(cy: float, cx: float, dy: float, dx: float, radius: float) -> Pattern:
    return lambda y, x: np.clip(0.5 + ((y - cy) * dy + (x - cx) * dx) / (2 * radius), 0.0, 1.0)


def _stripes(dy: float, dx: float, cycles: float, phase: float, hard: bool) -> Pattern:
    def pattern(y, x):
        wave = np.sin(2 * np.pi * cycles * (y * dy + x * dx) + phase)
        return (wave > 0).astype(np.float32) if hard else 0.5 + 0.5 * wave
    return pattern


def _value_noise(lattices: list[np.ndarray]) -> Pattern:
    """Two octaves of smooth value noise on lattices of n+1 by n+1 points over the image."""
    def octave(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = grid.shape[0] - 1
        gy, gx = np.clip(y, 0.0, 1.0) * n, np.clip(x, 0.0, 1.0) * n
        iy, ix = np.minimum(gy.astype(int), n - 1), np.minimum(gx.astype(int), n - 1)
        fy, fx = _smoothstep(gy - iy), _smoothstep(gx - ix)
        top = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
        bottom = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
        return top * (1 - fy) + bottom * fy
    return lambda y, x: (2 * octave(lattices[0], y, x) + octave(lattices[1], y, x)) / 3


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def _ellipse(rng: np.random.Generator, centre: tuple[float, float], radius: float) -> tuple[Region, float]:
    cy, cx = centre
    minor = radius * float(rng.uniform(0.35, 1.0))
    angle = rng.uniform(0.0, np.pi)
    cos, sin = float(np.cos(angle)), float(np.sin(angle))

    def region(y, x):
        u, v = (x - cx) * cos + (y - cy) * sin, (y - cy) * cos - (x - cx) * sin
        return (u / radius) ** 2 + (v / minor) ** 2 <= 1.0
    return region, radius


def _polygon(rng: np.random.Generator, centre: tuple[float, float], radius: float) -> tuple[Region, float]:
    """A star-shaped polygon of 3-8 vertices (even-odd rule at pixel centres)."""
    n = int(rng.integers(3, 9))
    angles = rng.uniform(0.0, 2 * np.pi) + (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * 2 * np.pi / n
    reach = radius * rng.uniform(0.55, 1.0, n)
    vy, vx = (centre[0] + reach * np.sin(angles)).tolist(), (centre[1] + reach * np.cos(angles)).tolist()

    def region(y, x):
        inside = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=bool)
        for (y1, x1), (y2, x2) in zip(zip(vy, vx), zip(vy[-1:] + vy[:-1], vx[-1:] + vx[:-1])):
            if y1 == y2:
                continue  # a horizontal edge crosses no horizontal ray
            crosses = (y1 > y) != (y2 > y)
            inside ^= crosses & (x < x1 + (x2 - x1) * (y - y1) / (y2 - y1))
        return inside
    return region, radius


def _blob(rng: np.random.Generator, centre: tuple[float, float], radius: float) -> tuple[Region, float]:
    """A smooth star-shaped blob: boundary radius r(theta) from a few random Fourier harmonics."""
    cy, cx = centre
    harmonics = np.arange(2, 6, dtype=np.float32)
    amplitudes = (rng.uniform(0.0, 0.35, harmonics.size) / harmonics ** 0.7).astype(np.float32)
    amplitudes *= min(1.0, 0.7 / float(amplitudes.sum()))  # keeps r(theta) > 0
    phases = rng.uniform(0.0, 2 * np.pi, harmonics.size).astype(np.float32)
    scale = radius / (1 + float(amplitudes.sum()))

    def region(y, x):
        theta = np.arctan2(y - cy, x - cx)[..., None]
        boundary = 1 + (amplitudes * np.cos(harmonics * theta + phases)).sum(-1)
        return np.hypot(y - cy, x - cx) <= scale * boundary
    return region, radius


DRAW_REGION = {"ellipse": _ellipse, "polygon": _polygon, "blob": _blob}


# ---- rendering: the pixels, at one size ---------------------------------------------------------------

def render(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image S,S,3 float32 in [0, 1], label map S,S int32: 0 background, k the k-th shape's visible pixels)."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres, image-relative
    image = scene.background.colours(centres[:, None], centres[None, :]).astype(np.float32)
    labels = np.zeros((size, size), dtype=np.int32)
    for k, shape in enumerate(scene.shapes, start=1):
        (y0, y1), (x0, x1) = (_pixel_span(c, shape.extent, size) for c in shape.centre)
        if y0 >= y1 or x0 >= x1:
            continue
        y, x = centres[y0:y1, None], centres[None, x0:x1]
        inside = shape.region(y, x)
        np.copyto(image[y0:y1, x0:x1], shape.fill.colours(y, x), where=inside[..., None])
        np.copyto(labels[y0:y1, x0:x1], k, where=inside)
    sigma = scene.blur * size
    if sigma > 0.1:
        from scipy import ndimage  # slow to import: only when a scene is drawn

        image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0.0))
    if scene.noise_std > 0:
        image += scene.noise_std * np.random.default_rng(scene.noise_seed).standard_normal(image.shape, np.float32)
    return np.clip(image, 0.0, 1.0, out=image), labels


def _pixel_span(centre: float, extent: float, size: int) -> tuple[int, int]:
    return max(0, int(np.floor((centre - extent) * size))), min(size, int(np.ceil((centre + extent) * size)))
