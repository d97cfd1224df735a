"""Stage-2 fusers: combine K frozen LoRA experts inside every encoder block.

Kind ``fuser``; every factory has the signature
``factory(config, *, dim: int, num_heads: int, expert_names: list[str]) -> nn.Module``
and the backbone calls it once per encoder block.

Contract of the returned module (design: shared/design/METHOD.md, "Stage-2 block"):

* ``forward(deltas: Tensor[K, N, L, C]) -> Tensor[N, L, C]`` where ``deltas[i]`` is expert
  ``expert_names[i]``'s delta ``E_i(x) - F(x)``; the result is *added* to the frozen block
  output, ``O = F(x) + Fuse(D)``. ``N`` = batch x windows and ``L`` = window tokens for
  windowed blocks, ``N`` = batch and ``L`` = H x W for global blocks.
* ``merges_lora`` (bool): ``False`` for fusers that act on deltas. ``True`` only for
  ``lorahub``, which instead exposes ``mixing_weights() -> Tensor[K]`` (and ``merge(a, b)``)
  so the backbone merges the experts' A/B matrices into one LoRA; its ``forward`` raises.
* ``expert_names`` / ``num_experts`` attributes.

Names: ``hl_attn`` (default, paper Eq. 8), ``sum``, ``lac``, ``mole``, ``lorahub`` (Table 4 baselines).
"""

from samora_kit.hookspecs import hookimpl

from .baselines import (LacConfig, LacFuser, LoraHubConfig, LoraHubFuser, MoleConfig, MoleFuser, SumConfig,
                        SumFuser, build_lac, build_lorahub, build_mole, build_sum)
from .hl_attn import HLAttn, HLAttnConfig, build_hl_attn, hl_attn_parameter_count

__all__ = ["HLAttn", "HLAttnConfig", "LacConfig", "LacFuser", "LoraHubConfig", "LoraHubFuser", "MoleConfig",
           "MoleFuser", "SumConfig", "SumFuser", "build_hl_attn", "build_lac", "build_lorahub", "build_mole",
           "build_sum", "hl_attn_parameter_count"]


@hookimpl
def samora_kit_register(registry) -> None:
    # examples are tiny configs for conformance tests (expert names image/patch/pixel)
    registry.add("fuser", "hl_attn", HLAttnConfig, build_hl_attn, example={"width": 32, "heads": 4})
    registry.add("fuser", "sum", SumConfig, build_sum, example={})
    registry.add("fuser", "lac", LacConfig, build_lac, example={})
    registry.add("fuser", "mole", MoleConfig, build_mole, example={})
    registry.add("fuser", "lorahub", LoraHubConfig, build_lorahub, example={})
