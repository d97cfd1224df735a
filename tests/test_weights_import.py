"""Importing official SAM `.pth` checkpoints into safetensors, and reading them back."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from samora_kit.errors import CheckpointError
from samora_kit.weights.checksummed import sidecar_path
from samora_kit.weights.io import load_weights, save_weights, sha256_of
from samora_kit_plugins.sam_weights import read_sam_weights
from samora_kit_plugins.sam import import_sam_checkpoint


def official_tiny_sam(seed: int = 0) -> Sam:
    """SAM exactly as segment-anything builds it at 1024 px, with the tiny sizes and random weights."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4,
                              out_chans=64, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                              use_rel_pos=True, window_size=7, global_attn_indexes=(1, 3))
    prompt = PromptEncoder(embed_dim=64, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=64, iou_head_depth=3, iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=512, num_heads=8))
    sam = Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    with torch.no_grad():
        for p in sam.parameters():  # pos_embed and rel_pos start at zero: make every tensor distinctive
            p.normal_(std=0.02)
    return sam


def write_official_tiny_checkpoint(path: Path, seed: int = 0, nest: str | None = None) -> dict[str, torch.Tensor]:
    state = official_tiny_sam(seed).state_dict()
    torch.save({nest: state} if nest else state, path)
    return state


def import_official_tiny(tmp_path: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """An imported tiny checkpoint (with sidecar) and the original 1024-px tensors."""
    state = write_official_tiny_checkpoint(tmp_path / "sam_tiny.pth", seed)
    out, _ = import_sam_checkpoint(tmp_path / "sam_tiny.pth", tmp_path / "sam_tiny.safetensors")
    return out, state


def test_import_official_layout_checkpoint_writes_tensors_header_and_sidecar(tmp_path):
    src = tmp_path / "sam_tiny.pth"
    state = write_official_tiny_checkpoint(src)
    out, digest = import_sam_checkpoint(src, tmp_path / "out" / "sam_tiny.safetensors")

    tensors, header = load_weights(out)
    assert set(tensors) == set(state)
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    assert header["format"] == "segment-anything" and header["variant"] == "tiny"
    assert header["source_image_size"] == 1024 and header["source_file"] == "sam_tiny.pth"
    assert header["source_sha256"] == sha256_of(src) and "samora_kit_version" in header
    assert digest == sha256_of(out)
    assert sidecar_path(out).read_text() == f"{digest}  sam_tiny.safetensors\n"


@pytest.mark.parametrize("nest", ["model", "state_dict"])
def test_import_accepts_a_state_dict_nested_under_model_or_state_dict(tmp_path, nest):
    write_official_tiny_checkpoint(tmp_path / "nested.pth", nest=nest)
    out, _ = import_sam_checkpoint(tmp_path / "nested.pth", tmp_path / "nested.safetensors", variant="tiny")
    assert read_sam_weights(out)[1]["variant"] == "tiny"


def test_import_refuses_a_variant_other_than_the_one_requested(tmp_path):
    write_official_tiny_checkpoint(tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match=r"sam\.pth.*tiny.*'vit_b' was requested"):
        import_sam_checkpoint(tmp_path / "sam.pth", tmp_path / "sam.safetensors", variant="vit_b")


def test_import_refuses_a_state_dict_without_the_sam_layout(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.pth.*image_encoder\.patch_embed\.proj\.weight"):
        import_sam_checkpoint(tmp_path / "resnet.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_import_refuses_an_encoder_with_a_missing_tensor(tmp_path):
    state = official_tiny_sam().state_dict()
    del state["image_encoder.neck.0.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial\.pth.*missing image_encoder\.neck\.0\.weight"):
        import_sam_checkpoint(tmp_path / "partial.pth", tmp_path / "out.safetensors")


class _Pickled:
    weights = torch.zeros(1)


class _Malicious:
    """Unpickling it would call os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("content, reason", [
    ("pickled object", r"refused: it pickles a Python object \(tests\.test_weights_import\._Pickled\) .* would run code"),
    ("malicious pickle", r"refused: it pickles a Python object \(posix\.system\) .* would run code"),
    ("garbage bytes", "not a PyTorch checkpoint, or a corrupted one")])
def test_import_refuses_a_file_that_is_not_a_weights_only_checkpoint(tmp_path, content, reason):
    src = tmp_path / "model.pth"
    marker = tmp_path / "it-ran"
    if content == "pickled object":
        torch.save(_Pickled(), src)
    elif content == "malicious pickle":
        torch.save({"model": _Malicious(marker)}, src)
    else:
        src.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=rf"model\.pth: cannot be loaded as a weights-only .*{reason}.*"
                                              r"expected an official segment-anything checkpoint"):
        import_sam_checkpoint(src, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_corrupted_safetensors_file_is_refused(tmp_path):
    out, _ = import_official_tiny(tmp_path)
    sidecar_path(out).unlink()
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"sam_tiny\.safetensors: corrupted or truncated"):
        read_sam_weights(out)


def test_sha256_mismatch_is_refused_via_sidecar_or_explicit_digest(tmp_path):
    out, _ = import_official_tiny(tmp_path)
    read_sam_weights(out, sha256_of(out))  # the right digest passes
    with pytest.raises(CheckpointError, match="sha256 is .* expected 0{64}"):
        read_sam_weights(out, "0" * 64)
    sidecar_path(out).write_text(f"{'f' * 64}  sam_tiny.safetensors\n")
    with pytest.raises(CheckpointError, match="sha256 is .* expected f{64}"):
        read_sam_weights(out)  # the sidecar's digest is checked when none is given


def test_a_safetensors_file_of_another_format_is_refused(tmp_path):
    save_weights(tmp_path / "expert.safetensors", {"a": torch.zeros(1)}, {"format": "samora-expert"})
    with pytest.raises(CheckpointError, match="format is 'samora-expert', expected one of .*segment-anything"):
        read_sam_weights(tmp_path / "expert.safetensors")


def test_import_names_unknown_formats_and_variants_of_another_format(tmp_path):
    from samora_kit.weights.imports import import_checkpoint

    with pytest.raises(CheckpointError, match=r"unknown checkpoint format 'sam3'; expected one of .*sam2"):
        import_checkpoint(tmp_path / "x.pt", tmp_path / "x.safetensors", format="sam3")
    with pytest.raises(CheckpointError, match=r"variant 'b\+' is not a segment-anything variant.*vit_b"):
        import_checkpoint(tmp_path / "x.pth", tmp_path / "x.safetensors", variant="b+")
