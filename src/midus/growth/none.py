"""CPT-Base: no growth. The base itself, written as a checkpoint of its own class with its layer map."""

from transformers import PreTrainedModel

from ..recipe import Recipe
from .grow import grow_decoders
from .registry import register
from .weights import BaseWeights


@register("none", display="CPT-Base", function_preserving=True, color="tab:gray")
def grow_none(base: BaseWeights, recipe: Recipe) -> PreTrainedModel:
    return grow_decoders(base, [(i, False) for i in range(base.num_layers)], recipe.seed)
