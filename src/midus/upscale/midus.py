"""MIDUS: insert memory blocks (attention of the source block, no o_proj, no FFN, + HML)."""

import torch
from transformers import PreTrainedModel

from ..model import MidusConfig, MidusForCausalLM
from ..recipe import Recipe
from .registry import register
from .placement import insert_after, source_blocks


def midus_config(base_config, layer_map: list[dict], memory: dict) -> MidusConfig:
    """A MidusConfig with the base's shapes and the grown layer map."""
    fields = base_config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "layer_map", "memory"):
        fields.pop(key, None)
    fields.update(num_hidden_layers=len(layer_map), layer_map=layer_map, memory=memory)
    return MidusConfig(**fields)


def copy_into(target: torch.nn.Module, source: torch.nn.Module, new: tuple[str, ...] = ()) -> None:
    """Copy each tensor of `target` from the same-named tensor of `source` (own storage, not shared).
    Tensors under the `new` prefixes have no counterpart and keep their initialisation."""
    source_state = source.state_dict()
    for name, tensor in target.state_dict().items():
        if not name.startswith(new):
            tensor.copy_(source_state[name])


@register("midus")
def grow_midus(base: PreTrainedModel, recipe: Recipe) -> PreTrainedModel:
    num_layers = base.config.num_hidden_layers
    layout = insert_after(num_layers, source_blocks(recipe.placement, num_layers, recipe.new_blocks))
    layer_map = [{"kind": "memory" if new else "decoder", "source": src, "new": new} for src, new in layout]
    config = midus_config(base.config, layer_map, recipe.memory.model_dump())

    torch.manual_seed(recipe.seed)
    grown = MidusForCausalLM._from_config(config, dtype=base.dtype)
    with torch.no_grad():
        copy_into(grown.model.embed_tokens, base.model.embed_tokens)
        copy_into(grown.model.norm, base.model.norm)
        copy_into(grown.lm_head, base.lm_head)
        for layer, (src, _) in zip(grown.model.layers, layout):
            # a memory block takes the norm and q/k/v of its source; o_proj and the FFN have no place in it
            copy_into(layer, base.model.layers[src], new=("memory.",))
    return grown
