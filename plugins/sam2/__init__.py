"""SAM2 Hiera image encoder (t/s/b+/l from the sam2 package's configs, and a tiny test size) with
SAMed-2-style LoRA or fused LoRA experts; outputs a FeaturePyramid of the raw FPN maps.

Registering imports only the pydantic configs: the model code loads when a component is built (or one of its
names below is first read), and sam2, an optional extra, only then."""

from samora_kit.api import hookimpl, lazy_exports

from .config import Sam2BackboneConfig, Sam2ImportConfig, image_encoder_node

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "ExpertFusedHieraBlock", "Sam2Backbone", "Sam2BackboneConfig", "Sam2ImportConfig",
           "build_sam2_backbone", "build_trunk_and_neck", "hiera_variants_attention", "image_encoder_node",
           "import_sam2", "import_sam2_checkpoint", "install_hiera_experts"]

# the experts subclass sam2's Hiera block: reading one of their names needs sam2
__getattr__ = lazy_exports(__name__, {
    ".backbone": ("PIXEL_MEAN", "PIXEL_STD", "Sam2Backbone", "build_trunk_and_neck"),
    ".checkpoint_import": ("import_sam2_checkpoint",),
    ".experts": ("ExpertFusedHieraBlock", "hiera_variants_attention", "install_hiera_experts"),
}, requires={".experts": "sam2"})


def build_sam2_backbone(config: Sam2BackboneConfig, *, fuser=None):
    """SAM2 Hiera image encoder + FPN neck, frozen, with LoRA on the trunk's qkv (or fused frozen experts)."""
    from .backbone import build_sam2_backbone as build

    return build(config, fuser=fuser)


def import_sam2(config: Sam2ImportConfig, *, src, out):
    """An official SAM2 .pt (t/s/b+/l) -> checksummed safetensors."""
    from .checkpoint_import import import_sam2 as convert

    return convert(config, src=src, out=out)


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("backbone", "sam2", Sam2BackboneConfig, build_sam2_backbone,
                 example={"variant": "tiny", "image_size": 64})
    registry.add("importer", "sam2", Sam2ImportConfig, import_sam2)
