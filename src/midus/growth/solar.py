"""SOLAR: two copies of the stack, the last m blocks dropped from the first and the first m from the
second: [0, L-m) + [m, L). L=16, m=4 -> 24 blocks; L=32, m=8 -> 48. Not function-preserving.

The second copy's blocks whose source is also in the first part ([m, L-m)) are the new ones:
K = L - 2m of them, which is the recipe's `new_blocks`."""

from typing import ClassVar, Literal

from pydantic import Field
from transformers import PreTrainedModel

from ..recipe import Recipe, RecipeError
from .grow import Layout, grow_decoders
from .registry import register
from .weights import BaseWeights


class SolarRecipe(Recipe):
    method: Literal["solar"]
    places_blocks: ClassVar[bool] = False
    solar_overlap: int | None = Field(
        None, ge=1, strict=True, description="m, blocks dropped at the seam, 1 <= m < L/2 (default L/4, or (L-K)/2)")


def solar_overlap(recipe: SolarRecipe, num_layers: int) -> int:
    """m from the recipe: `solar_overlap`, else from `new_blocks` (K = L - 2m), else L/4."""
    L, K, m = num_layers, recipe.new_blocks, recipe.solar_overlap
    valid_m = range(1, (L + 1) // 2)  # 1 <= m < L/2
    if m is None and K:
        if (L - K) // 2 not in valid_m or (L - K) % 2:
            choices = ", ".join(str(L - 2 * v) for v in valid_m)
            raise RecipeError(f"new_blocks={K}: solar adds L - 2m blocks (1 <= m < L/2); for a base of {L} blocks: {choices}")
        m = (L - K) // 2
    if m is None:
        m = max(L // 4, 1)
    if m not in valid_m:
        raise RecipeError(f"solar_overlap={m} must be between 1 and {valid_m[-1] if valid_m else 0} (m < L/2) for a base of {L} blocks")
    if K and K != L - 2 * m:
        raise RecipeError(f"new_blocks={K} does not match solar_overlap={m}: solar adds L - 2m = {L - 2 * m} blocks")
    return m


def solar_layout(num_layers: int, m: int) -> Layout:
    L = num_layers
    return [(i, False) for i in range(L - m)] + [(i, i < L - m) for i in range(m, L)]


@register("solar", recipe=SolarRecipe, display="SOLAR", function_preserving=False, color="tab:orange")
def grow_solar(base: BaseWeights, recipe: Recipe) -> PreTrainedModel:
    return grow_decoders(base, solar_layout(base.num_layers, solar_overlap(recipe, base.num_layers)), recipe.seed)
