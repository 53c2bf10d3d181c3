"""CPT-Base: no growth. The base itself, written as a checkpoint of its own class with its layer map."""

from typing import ClassVar, Literal

from pydantic import model_validator
from transformers import PreTrainedModel

from ..recipe import Recipe
from .grow import grow_decoders
from .registry import register
from .weights import BaseWeights


class NoneRecipe(Recipe):
    method: Literal["none"]
    places_blocks: ClassVar[bool] = False

    @model_validator(mode="after")
    def _no_new_blocks(self):
        if self.new_blocks:
            raise ValueError("new_blocks: method 'none' adds no blocks: new_blocks must be 0")
        return self


@register("none", recipe=NoneRecipe, display="CPT-Base", function_preserving=True, color="tab:gray")
def grow_none(base: BaseWeights, recipe: Recipe) -> PreTrainedModel:
    return grow_decoders(base, [(i, False) for i in range(base.num_layers)], recipe.seed)
