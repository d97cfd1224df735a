"""Stage-2 fusers: combine K frozen LoRA experts inside every encoder block.

Kind ``fuser``; every factory has the signature
``factory(config, *, dim: int, num_heads: int, expert_names: list[str]) -> nn.Module``
and the backbone calls it once per encoder block.

Contract of the returned module (design: shared/design/METHOD.md, "Stage-2 block"):

* ``forward(deltas: Tensor[K, N, L, C], valid: Tensor[N, L] | None = None) -> Tensor[N, L, C]``
  where ``deltas[i]`` is expert ``expert_names[i]``'s delta ``D_i = E_i(x) - F(x)``; the result
  is *added* to the frozen path, ``O = F(x) + Fuse(D)``. ``N`` = batch x windows and ``L`` =
  window tokens for windowed blocks, ``N`` = batch and ``L`` = H x W for global blocks.
  ``valid`` marks real tokens (False: padding added to fill a window); ``None`` when no token
  is padded. A fuser that mixes tokens must not let padded tokens reach real ones.
* ``fold_projection(weight: Tensor[C, C_in])`` (optional, scope ``attention``): the block's
  frozen output projection is ``P(a) = weight @ a + bias``, so ``D_i = weight @ (a_i - a_0)``
  is linear in the experts' attention outputs before ``P``. The backbone calls it once, at
  build time; from then on ``forward`` receives ``a_i - a_0`` and must return what it returned
  for ``D_i``: the fuser folds ``weight`` into its first linear operation and ``P`` never runs
  per expert. Without it the backbone projects every expert's output (K more projections).
* ``output_before_projection`` (bool, used with ``fold_projection``): ``True`` when the
  output is still before ``P`` (a fuser linear in the deltas: the block computes ``P(a_0 +
  out)``, one projection); ``False`` when it is in the block's output space (``P(a_0) + out``).
* ``lorahub`` is not a Fuser but a ``LoraMerger`` (samora_kit.interfaces): it exposes
  ``mixing_weights() -> Tensor[K]`` (and ``merge(a, b)``) so the backbone merges the experts'
  A/B matrices into one LoRA; it never sees deltas and its ``forward`` raises.
* ``expert_names`` / ``num_experts`` attributes.

Names: ``hl_attn`` (default, paper Eq. 8), ``sum``, ``lac``, ``mole``, ``lorahub`` (Table 4 baselines).
"""

from samora_kit.api import hookimpl

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
