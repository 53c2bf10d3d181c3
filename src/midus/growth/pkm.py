"""The memory-layer baseline: copies of the source block whose FFN is a classic product-key memory."""

from typing import Literal

from pydantic import Field, model_validator
from transformers import PreTrainedModel

from ..recipe import MemorySettings, Recipe
from .grow import grow_with_memory
from .registry import register
from .weights import BaseWeights


class PkmRecipe(Recipe):
    method: Literal["pkm"]
    memory: MemorySettings = Field(MemorySettings(), description="the memory layers; defaults filled in")

    @model_validator(mode="after")
    def _own_banks(self):
        if self.memory.share_bank:
            raise ValueError("memory.share_bank: applies to method 'midus' only")
        return self


@register("pkm", recipe=PkmRecipe, display="PKM", function_preserving=True, color="tab:brown")
def grow_pkm(base: BaseWeights, recipe: Recipe) -> PreTrainedModel:
    """A pkm block copies its source block's norms and attention; its FFN is a product-key memory
    (query projection, keys, a value table that starts at zero), and its o_proj is zeroed, so the
    block starts as the identity, like LLaMA Pro's."""
    return grow_with_memory(base, recipe, "pkm", new_parts=("mlp.",), zeroed=("self_attn.o_proj",))
