"""What a LoRA backbone (SAM, SAM2) writes and reads besides its forward: expert packs (stage 1 writes
them, stage 2 loads them) and its image encoder in the official key layout (a self-pre-trained base).
A mixin of ExpertHost."""

from __future__ import annotations

import hashlib
import warnings
from importlib import metadata
from pathlib import Path

import torch

from samora_kit.api import SamoraError

from samora_kit_plugins.sam_weights import save_sam_layout
from .expert_pack import ExpertPack, check_compatible, check_same_base, load_expert_pack, make_header, save_expert_pack

PROVENANCE = ("pretext", "teacher", "teacher_cpt", "data_fingerprint", "versions")  # what expert_pack() takes
PACK_PROVENANCE = ("pretext", "teacher", "teacher_cpt", "data_fingerprint")  # what write_expert_pack() takes


class BackboneFiles:
    """Needs from the host: `BACKBONE_PACKAGE` (the distribution its architecture comes from),
    `ENCODER_ONLY_FORMAT`, `variant`, `image_size`, `experts_config`, `expert_names`,
    `encoder_state_in_official_layout()`, `shape_description()`, `lora_description()`,
    `trainable_state_dict()`, `expert_state()` and `load_expert()` (ExpertHost has the last five)."""

    BACKBONE_PACKAGE: str  # "segment-anything" or "sam2": recorded in expert packs' versions
    ENCODER_ONLY_FORMAT: str  # what a self-pre-trained base of this backbone is saved as

    def package_versions(self) -> dict[str, str]:
        """The version of the package the architecture comes from, e.g. {"sam2": "1.1.0"}."""
        try:
            return {self.BACKBONE_PACKAGE.replace("-", "_"): metadata.version(self.BACKBONE_PACKAGE)}
        except metadata.PackageNotFoundError:
            return {}

    def base_fingerprint(self) -> str:
        """A hash of the frozen base weights (official layout, no LoRA, experts or fusers)."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.encoder_state_in_official_layout().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    # --- stage 1: expert packs out ---------------------------------------------------------------------

    def expert_pack(self, expert: str, **provenance) -> ExpertPack:
        """This backbone's LoRA as an expert pack (stage 1 output): tensors plus a header describing
        the backbone shape and the LoRA. Provenance: pretext, teacher, teacher_cpt, data_fingerprint,
        versions. On a stage-2 backbone, exports the frozen expert `expert`."""
        unknown = sorted(set(provenance) - set(PROVENANCE))
        if unknown:
            raise TypeError(f"expert_pack() got unknown provenance {unknown}; accepted: {', '.join(PROVENANCE)}")
        if not isinstance(expert, str) or not expert:
            raise ValueError("expert_pack() needs the expert's name, e.g. 'image'")
        if self.experts_config is None:
            tensors = {k: v.detach().clone() for k, v in self.trainable_state_dict().items()}
        else:
            if expert not in self.expert_names:
                raise SamoraError(f"no expert named {expert!r}; this backbone's experts are {self.expert_names}")
            tensors = self.expert_state(expert)
        versions = {**self.package_versions(), **(provenance.pop("versions", None) or {})}
        header = make_header(expert, self.shape_description(), self.lora_description(),
                             base_fingerprint=self.base_fingerprint(), versions=versions, **provenance)
        return ExpertPack(tensors, header)

    def write_expert_pack(self, path: Path, expert: str, *, provenance: dict, extra_header: dict) -> Path:
        """Write this backbone's LoRA as the expert pack of `expert` at `path` (atomically) and return the
        path. `provenance`: pretext, teacher, teacher_cpt, data_fingerprint; `extra_header` (e.g.
        recipe_fingerprint, steps, final_loss) joins the header but may not replace what the pack says."""
        unknown = sorted(set(provenance) - set(PACK_PROVENANCE))
        if unknown:
            raise TypeError(f"write_expert_pack() got unknown provenance {unknown}; "
                            f"accepted: {', '.join(PACK_PROVENANCE)}")
        pack = self.expert_pack(expert, **provenance)
        clash = sorted(set(extra_header) & set(pack.header))
        if clash:
            raise ValueError(f"write_expert_pack(): extra_header may not set {clash}; the pack's own header does")
        return save_expert_pack(path, pack.tensors, {**pack.header, **extra_header})

    # --- stage 2: expert packs in ----------------------------------------------------------------------

    def load_expert_packs(self, packs: dict[str, str | Path]) -> None:
        """Stage 2: load expert packs by name, the frozen base hashed once for all of them."""
        base = self.base_fingerprint() if packs and self._checks_base() else None
        for name, path in packs.items():
            self.load_expert_pack(name, path, base)

    def load_expert_pack(self, name: str, path: str | Path, base_fingerprint: str | None = None) -> ExpertPack:
        """Stage 2: load expert `name` from a pack file after checking it fits this backbone, its frozen
        weights included (unless `experts.check_base` is off; `base_fingerprint` if already computed)."""
        pack = load_expert_pack(path)
        check_compatible(pack, self.shape_description(), self.lora_description(), path, expert=name)
        if self._checks_base() and not check_same_base(pack, base_fingerprint or self.base_fingerprint(), path):
            warnings.warn(f"{path}: the pack does not record the base it was trained on (made before packs did); "
                          "its fit to this backbone's frozen weights is not checked", stacklevel=2)
        self.load_expert(name, pack.tensors, str(path))
        return pack

    def _checks_base(self) -> bool:
        return getattr(self.experts_config, "check_base", True)

    # --- base pre-training: the encoder out ------------------------------------------------------------

    def export_encoder(self, path: Path, header: dict) -> str:
        """Write the encoder's own weights (no LoRA, experts or fusers) in the official key layout with a
        sha256 sidecar, loadable as `checkpoint` of a backbone of this kind; return the sha256. `header`
        says what made it (origin, pretext, data_fingerprint, steps, ...); the backbone adds `format`,
        `variant` and `source_image_size`."""
        own = {"format": self.ENCODER_ONLY_FORMAT, "variant": self.variant, "source_image_size": self.image_size}
        clash = sorted(k for k in own if k in header and header[k] != own[k])
        if clash:
            raise ValueError(f"export_encoder(): header sets {clash}, which the backbone says itself ({own})")
        _, digest = save_sam_layout(Path(path), self.encoder_state_in_official_layout(), {**header, **own})
        return digest
