"""What the growth methods share: the grown stack's layout and config, an empty grown model, and
filling it tensor by tensor from the base.

A layout lists the grown stack as (source block, is_new) pairs. The grown model is built on the meta
device, given storage on the base's device (nothing when the base is on meta: config-only growth),
filled from the base one tensor at a time, and only what no base tensor filled (memory keys and
banks, rotary buffers) gets the model's own initialisation, seeded by the recipe.
"""

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..model import MidusConfig
from ..recipe import Recipe
from .placement import insert_after, source_blocks
from .weights import BaseWeights

Layout = list[tuple[int, bool]]
CONFIG_KEYS_NOT_INHERITED = ("model_type", "architectures", "auto_map", "transformers_version", "layer_map", "memory")


def insertion_layout(recipe: Recipe, num_layers: int) -> Layout:
    """Each new block right after its source block, sources from the recipe's placement."""
    return insert_after(num_layers, source_blocks(recipe.placement, num_layers, recipe.new_blocks))


def layer_map(layout: Layout, new_kind: str = "decoder") -> list[dict]:
    """Provenance of every grown layer: kind, source block in the base, whether growth added it."""
    return [{"kind": new_kind if new else "decoder", "source": source, "new": new} for source, new in layout]


def per_layer_fields(base_config, layout: Layout) -> dict:
    """The grown depth and the base config's per-layer settings re-indexed to the grown stack."""
    sources = [source for source, _ in layout]
    fields = {"num_hidden_layers": len(layout)}
    if (layer_types := getattr(base_config, "layer_types", None)) is not None:
        fields["layer_types"] = [layer_types[source] for source in sources]
    if (window_layers := getattr(base_config, "max_window_layers", None)) is not None:
        # qwen: the leading layers that never use the sliding window stay the leading grown layers
        fields["max_window_layers"] = next((j for j, s in enumerate(sources) if s >= window_layers), len(sources))
    return fields


def dus_config(base_config, layout: Layout):
    """The base's own config class (a plain Llama/Qwen/Mistral checkpoint) at the grown depth."""
    fields = {k: v for k, v in base_config.to_dict().items() if k not in CONFIG_KEYS_NOT_INHERITED}
    fields.update(per_layer_fields(base_config, layout), layer_map=layer_map(layout))
    return type(base_config)(**fields)


def midus_config(base_config, layout: Layout, new_kind: str, memory: dict) -> MidusConfig:
    """A MidusConfig with the base's shapes, its family, and the grown layer map."""
    fields = {k: v for k, v in base_config.to_dict().items() if k not in CONFIG_KEYS_NOT_INHERITED}
    fields.update(per_layer_fields(base_config, layout), layer_map=layer_map(layout, new_kind), memory=memory,
                  base_model_type=base_config.model_type)
    return MidusConfig(**fields)


def empty_model(config, base: BaseWeights) -> PreTrainedModel:
    """The grown architecture with uninitialised storage on the base's device (or on meta)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=base.dtype)
    if not base.is_meta:
        model.to_empty(device=base.device)
        model.tie_weights()  # to_empty gives tied tensors separate storage
    return model


@torch.no_grad()
def fill(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy `value` into `param` (own storage) and mark it as set, so `finish` leaves it alone."""
    param.copy_(value)
    param._is_hf_initialized = True


def copy_module(target: nn.Module, base: BaseWeights, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Fill each parameter of `target` from the base tensor `prefix + name`; names under `skip` have
    no counterpart in the base and keep their initialisation."""
    for name, param in target.named_parameters():
        if not name.startswith(skip):
            fill(param, base[prefix + name])


def copy_embeddings_and_head(model: PreTrainedModel, base: BaseWeights) -> None:
    copy_module(model.model.embed_tokens, base, "model.embed_tokens.")
    copy_module(model.model.norm, base, "model.norm.")
    if not model.config.tie_word_embeddings:
        copy_module(model.lm_head, base, "lm_head.")


def copy_layers(model: PreTrainedModel, base: BaseWeights, layout: Layout, skip_in_new: tuple[str, ...] = ()) -> None:
    """Layer j of the grown stack from base block layout[j][0]; in new layers `skip_in_new` parts stay."""
    for layer, (source, new) in zip(model.model.layers, layout):
        copy_module(layer, base, f"model.layers.{source}.", skip_in_new if new else ())


@torch.no_grad()
def zero(*modules: nn.Module) -> None:
    """Zero a module's weight and bias (a block ending in it adds nothing: identity at insertion)."""
    for module in modules:
        for param in module.parameters():
            fill(param, torch.zeros_like(param))


def finish(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Initialise, seeded, what no base tensor filled (new memory tensors, rotary buffers)."""
    if model.device.type != "meta":
        torch.manual_seed(seed)
        model.initialize_weights()
        for param in model.parameters():
            param.__dict__.pop("_is_hf_initialized", None)
    return model


def grow_decoders(base: BaseWeights, layout: Layout, seed: int) -> PreTrainedModel:
    """A checkpoint of the base's own class whose layer j is a copy of block layout[j][0]: the DUS methods."""
    model = empty_model(dus_config(base.config, layout), base)
    copy_embeddings_and_head(model, base)
    copy_layers(model, base, layout)
    return finish(model, seed)


def grow_with_memory(base: BaseWeights, recipe: Recipe, new_kind: str, new_parts: tuple[str, ...],
                     zeroed: tuple[str, ...] = ()) -> PreTrainedModel:
    """The MIDUS architecture with `new_kind` blocks at the recipe's placement: each copies its source
    block except `new_parts` (initialised), and the `zeroed` submodules start at zero."""
    layout = insertion_layout(recipe, base.num_layers)
    model = empty_model(midus_config(base.config, layout, new_kind, recipe.memory.model_dump()), base)
    copy_embeddings_and_head(model, base)
    copy_layers(model, base, layout, skip_in_new=new_parts)
    for layer, (_, new) in zip(model.model.layers, layout):
        if new:
            zero(*(layer.get_submodule(name) for name in zeroed))
    return finish(model, recipe.seed)
