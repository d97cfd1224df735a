"""The LoRA and expert machinery that the SAM and SAM2 backbones share: a library both plugins import.
It registers nothing.

lora_qkv.py       LoRAQKV: one trainable LoRA on a fused qkv projection (stage 1)
experts_qkv.py    ExpertsQKV: K frozen LoRA experts on a fused qkv, every delta in one einsum (stage 2)
fusion_step.py    the fused blocks' shared step: K+1 attention variants -> frozen output + Fuse(deltas)
expert_host.py    ExpertHost: the backbones' LoRA / expert bookkeeping (a mixin)
backbone_files.py BackboneFiles: expert packs and encoder files a backbone writes and reads (a mixin)
expert_pack.py    the expert-pack format (safetensors + JSON header), its checks
checkpoints.py    SAM / SAM2 weights files: format names, save_sam_layout, read_sam_weights
config.py         LoRAConfig, ExpertsConfig, LoRABackboneConfig (what both backbone configs share)
"""

from samora_kit.api import FuserFactory  # (dim, num_heads, expert_names) -> a fuser

from .config import ExpertsConfig, LoRABackboneConfig, LoRAConfig
from .expert_host import ExpertHost
from .expert_pack import ExpertPack, load_expert_pack, save_expert_pack
from .experts_qkv import ExpertsQKV
from .lora_qkv import LoRAQKV

__all__ = ["ExpertHost", "ExpertPack", "ExpertsConfig", "ExpertsQKV", "FuserFactory", "LoRABackboneConfig",
           "LoRAConfig", "LoRAQKV", "load_expert_pack", "save_expert_pack"]
