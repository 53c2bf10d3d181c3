"""The memory-layer baseline: copies of the source block whose FFN is a classic product-key memory."""

from transformers import PreTrainedModel

from ..recipe import Recipe
from .grow import grow_with_memory
from .registry import register
from .weights import BaseWeights


@register("pkm", display="PKM", function_preserving=True, color="tab:brown")
def grow_pkm(base: BaseWeights, recipe: Recipe) -> PreTrainedModel:
    """A pkm block copies its source block's norms and attention; its FFN is a product-key memory
    (query projection, keys, a value table that starts at zero), and its o_proj is zeroed, so the
    block starts as the identity, like LLaMA Pro's."""
    return grow_with_memory(base, recipe, "pkm", new_parts=("mlp.",), zeroed=("self_attn.o_proj",))
