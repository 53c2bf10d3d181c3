"""LLaMA Pro: copies of the source blocks with o_proj and down_proj zeroed (identity at insertion)."""

from typing import Literal

from transformers import PreTrainedModel

from ..recipe import Recipe
from .grow import grow_decoders, insertion_layout, zero
from .registry import register
from .weights import BaseWeights


class LlamaProRecipe(Recipe):
    method: Literal["llama-pro"]


@register("llama-pro", recipe=LlamaProRecipe, display="LLaMA Pro", function_preserving=True, color="tab:blue")
def grow_llama_pro(base: BaseWeights, recipe: Recipe) -> PreTrainedModel:
    layout = insertion_layout(recipe, base.num_layers)
    model = grow_decoders(base, layout, recipe.seed)
    for layer, (_, new) in zip(model.model.layers, layout):
        if new:  # both residual branches of the copy end in a zero matrix: the block adds nothing
            zero(layer.self_attn.o_proj, layer.mlp.down_proj)
    return model
