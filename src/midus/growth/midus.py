"""MIDUS: insert memory blocks (attention of the source block, no o_proj, no FFN, + HML)."""

from typing import Literal

from pydantic import Field
from transformers import PreTrainedModel

from ..recipe import MemorySettings, Recipe
from .grow import grow_with_memory
from .registry import register
from .weights import BaseWeights


class MidusRecipe(Recipe):
    method: Literal["midus"]
    memory: MemorySettings = Field(MemorySettings(), description="the memory layers; defaults filled in")


@register("midus", recipe=MidusRecipe, display="MIDUS (HML)", function_preserving=True, color="tab:red")
def grow_midus(base: BaseWeights, recipe: Recipe) -> PreTrainedModel:
    """A memory block takes the norm and q/k/v of its source block; its HML is new, with P = 0 so the
    grown model starts as the base."""
    return grow_with_memory(base, recipe, "memory", new_parts=("memory.",))
