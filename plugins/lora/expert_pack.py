"""Expert packs: one stage-1 LoRA expert in a safetensors file with a JSON header.

Tensors are keyed exactly as a single-LoRA backbone's `trainable_state_dict()` names them,
e.g. `encoder.blocks.0.attn.qkv.lora_a.q.weight` (rank x C) and `...lora_b.q.weight` (C x rank).
The header:

    {"kind": "expert-pack", "expert": "image",
     "backbone": {"name", "variant", "image_size", "embed_dim", "depth"[, "block_dims"]},
     "lora": {"rank", "targets", "blocks"},
     "pretext": str|None, "teacher": str|None, "teacher_cpt": bool|None,
     "data_fingerprint": str|None, "base_fingerprint": str|None,
     "versions": {"samora_kit", "torch", and the backbone's package: "segment_anything" or "sam2"}}

`base_fingerprint` identifies the frozen weights the expert was trained on (a hash of the base
encoder's tensors): an expert is a correction of one particular base and means nothing on another.

`block_dims` (optional, SAM2 Hiera whose width changes between stages): one [C_in, C_out] per
encoder block; then A of block i is rank x C_in and B is C_out x rank instead of embed_dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from samora_kit.api import CheckpointError, __version__, load_weights, save_weights

EXPERT_PACK_KIND = "expert-pack"
BACKBONE_FIELDS = ("name", "variant", "image_size", "embed_dim", "depth")
LORA_FIELDS = ("rank", "targets", "blocks")
PROVENANCE_FIELDS = ("pretext", "teacher", "teacher_cpt", "data_fingerprint", "base_fingerprint")
QKV_ORDER = ("q", "k", "v")


@dataclass
class ExpertPack:
    tensors: dict[str, torch.Tensor]
    header: dict

    @property
    def expert(self) -> str:
        return self.header["expert"]

    @property
    def backbone(self) -> dict:
        return self.header["backbone"]

    @property
    def lora(self) -> dict:
        return self.header["lora"]


def lora_key(block: int, factor: str, target: str) -> str:
    """Name of one LoRA factor ('a' or 'b') of one target projection in one block."""
    return f"encoder.blocks.{block}.attn.qkv.lora_{factor}.{target}.weight"


def expected_lora_shapes(embed_dim: int, lora: dict, block_dims: list | None = None) -> dict[str, tuple[int, int]]:
    """Every tensor a pack for this LoRA must hold, with its shape (`block_dims`: per-block
    [C_in, C_out] of a backbone whose width varies; None: every block is embed_dim wide)."""
    rank = int(lora["rank"])
    shapes = {}
    for block in lora["blocks"]:
        dim_in, dim_out = (embed_dim, embed_dim) if block_dims is None else _block_dims(block_dims, int(block))
        for target in _ordered_targets(lora["targets"]):
            shapes[lora_key(block, "a", target)] = (rank, dim_in)
            shapes[lora_key(block, "b", target)] = (dim_out, rank)
    return shapes


def _block_dims(block_dims: list, block: int) -> tuple[int, int]:
    if not 0 <= block < len(block_dims):
        raise CheckpointError(f"LoRA block {block} is outside the backbone's {len(block_dims)} blocks")
    dim_in, dim_out = block_dims[block]
    return int(dim_in), int(dim_out)


def default_versions() -> dict[str, str]:
    """What every pack records; the backbone adds the package its architecture comes from."""
    return {"samora_kit": __version__, "torch": torch.__version__}


def make_header(expert: str, backbone: dict, lora: dict, *, pretext: str | None = None,
                teacher: str | None = None, teacher_cpt: bool | None = None,
                data_fingerprint: str | None = None, base_fingerprint: str | None = None,
                versions: dict | None = None) -> dict:
    """A complete expert-pack header; `versions` are added to the installed ones."""
    return {
        "kind": EXPERT_PACK_KIND,
        "expert": expert,
        "backbone": {k: backbone[k] for k in (*BACKBONE_FIELDS, "block_dims") if k in backbone},
        "lora": {"rank": int(lora["rank"]), "targets": _ordered_targets(lora["targets"]),
                 "blocks": sorted(int(b) for b in lora["blocks"])},
        "pretext": pretext,
        "teacher": teacher,
        "teacher_cpt": teacher_cpt,
        "data_fingerprint": data_fingerprint,
        "base_fingerprint": base_fingerprint,
        "versions": {**default_versions(), **(versions or {})},
    }


def save_expert_pack(path: str | Path, tensors: dict[str, torch.Tensor], header: dict) -> Path:
    """Write one expert atomically; the header is completed (kind, provenance None, versions)."""
    header = {"kind": EXPERT_PACK_KIND, **{k: None for k in PROVENANCE_FIELDS}, **header}
    header["versions"] = {**default_versions(), **(header.get("versions") or {})}
    _check_header(header, Path(path))
    embed_dim = int(header["backbone"]["embed_dim"])
    expected = expected_lora_shapes(embed_dim, header["lora"], header["backbone"].get("block_dims"))
    _check_tensors(tensors, expected, Path(path), "the pack")
    return save_weights(path, tensors, header)


def load_expert_pack(path: str | Path) -> ExpertPack:
    """Read an expert pack; a file of any other kind raises CheckpointError."""
    tensors, header = load_weights(path)
    _check_header(header, Path(path))
    return ExpertPack(tensors, header)


def check_compatible(pack: ExpertPack, backbone_shape: dict, lora: dict, source: str | Path, *,
                     expert: str | None = None) -> None:
    """Raise CheckpointError naming the first field (with both values) where `pack` does not fit
    a backbone of `backbone_shape` whose experts use the LoRA `lora` (rank, targets, blocks)."""
    header = pack.header
    if expert is not None and header.get("expert") != expert:
        raise CheckpointError(f"expert is {header.get('expert')!r} in pack {source}, "
                              f"but it is configured as expert {expert!r}")
    theirs = header.get("backbone") or {}
    for field in BACKBONE_FIELDS:
        if field not in backbone_shape:
            continue
        if field not in theirs:
            raise CheckpointError(f"pack {source} has no backbone.{field} in its header; "
                                  f"the backbone uses {backbone_shape[field]!r}")
        if theirs[field] != backbone_shape[field]:
            raise CheckpointError(f"backbone.{field} is {theirs[field]!r} in pack {source}, "
                                  f"the backbone uses {backbone_shape[field]!r}")
    their_lora = header.get("lora") or {}
    for field in LORA_FIELDS:
        if field not in their_lora:
            raise CheckpointError(f"pack {source} has no lora.{field} in its header; "
                                  f"the backbone uses {lora[field]!r}")
        mine, other = _normal_lora_field(field, lora[field]), _normal_lora_field(field, their_lora[field])
        if mine != other:
            raise CheckpointError(f"lora.{field} is {other!r} in pack {source}, the backbone uses {mine!r}")
    embed_dim = backbone_shape.get("embed_dim", theirs.get("embed_dim"))
    block_dims = backbone_shape.get("block_dims", theirs.get("block_dims"))
    expected = expected_lora_shapes(int(embed_dim), _normal_lora(lora), block_dims)
    _check_tensors(pack.tensors, expected, source, "pack")


def check_same_base(pack: ExpertPack, base_fingerprint: str, source: str | Path) -> bool:
    """CheckpointError when the pack was trained on other frozen weights than `base_fingerprint`;
    False when the pack does not say (made before packs recorded their base), True when it matches."""
    theirs = pack.header.get("base_fingerprint")
    if theirs is None:
        return False
    if theirs != base_fingerprint:
        raise CheckpointError(f"pack {source}: expert {pack.expert!r} was trained on the base with fingerprint "
                              f"{theirs}, but this backbone's frozen weights have fingerprint {base_fingerprint}; "
                              "train the expert on this base (or set backbone.experts.check_base = false to "
                              "use it anyway)")
    return True


def _check_header(header: dict, path: Path) -> None:
    kind = header.get("kind")
    if kind != EXPERT_PACK_KIND:
        raise CheckpointError(f"{path}: header kind is {kind!r}, expected {EXPERT_PACK_KIND!r} "
                              "(one stage-1 expert written by save_expert_pack)")
    if not isinstance(header.get("expert"), str) or not header["expert"]:
        raise CheckpointError(f"{path}: expert-pack header has no expert name")
    for section, fields in (("backbone", BACKBONE_FIELDS), ("lora", LORA_FIELDS)):
        value = header.get(section)
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: expert-pack header has no {section} section")
        missing = [f for f in fields if f not in value]
        if missing:
            raise CheckpointError(f"{path}: expert-pack header lacks {section}.{missing[0]}")


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, int]], source,
                   what: str) -> None:
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{what} {source} lacks tensor {missing[0]} (expected shape {expected[missing[0]]})"
                              + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{what} {source} holds unexpected tensor {extra[0]} "
                              f"(shape {tuple(tensors[extra[0]].shape)}); its header does not describe it")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{what} {source}: tensor {key} has shape {tuple(tensors[key].shape)}, "
                                  f"expected {shape}")


def _ordered_targets(targets) -> list[str]:
    return [t for t in QKV_ORDER if t in targets] + sorted(t for t in targets if t not in QKV_ORDER)


def _normal_lora_field(field: str, value):
    if field == "rank":
        return int(value)
    if field == "targets":
        return _ordered_targets(value)
    return sorted(int(b) for b in value)


def _normal_lora(lora: dict) -> dict:
    return {f: _normal_lora_field(f, lora[f]) for f in LORA_FIELDS}
