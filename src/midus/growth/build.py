"""Growing a base model by a recipe: in memory (`upscale`), on the meta device (`grow_on_meta`), or into
a checkpoint folder (`upscale_to_folder`).

Every method is `grow(base: BaseWeights, recipe) -> PreTrainedModel`; the base's tensors are read one
at a time, so `upscale_to_folder` holds the grown model and one base tensor, never the whole base.
With a base on the meta device the same code grows the architecture alone (`grow_on_meta`).
"""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from ..checkpoint import DTYPES, atomic_dir, check_family, check_out_dir, load_config, load_tokenizer, resolve, save_model
from ..parameters import count_parameters
from ..recipe import RECIPE_FILE, Recipe
from ..report import markdown_table, stack_letters
from .registry import METHODS
from .weights import BaseWeights, open_base


def upscale(base: "str | PreTrainedModel", recipe: Recipe) -> PreTrainedModel:
    """Grow `base` (a loaded model, possibly on the meta device, or a hub id / folder) by `recipe`."""
    if isinstance(base, str):
        config = load_config(base)
        check_family(config, base)
        weights = open_base(base, config, recipe.dtype)
    else:
        check_family(base.config, recipe.base)
        weights = BaseWeights.from_model(base)
    return METHODS[recipe.method].grow(weights, recipe)


def meta_base(config, dtype: str = "float32") -> PreTrainedModel:
    """The base architecture on the meta device: shapes, no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])


def grow_on_meta(recipe: Recipe, config) -> PreTrainedModel:
    """The grown architecture from the base's config alone (no weights read, no memory)."""
    check_family(config, recipe.base)
    return METHODS[recipe.method].grow(BaseWeights.from_model(meta_base(config, recipe.dtype)), recipe)


def upscale_to_folder(recipe: Recipe, out_dir: str | Path) -> Path:
    """Grow the recipe's base and write a complete checkpoint folder (or nothing, on any error)."""
    check_out_dir(out_dir)
    config = load_config(recipe.base)
    base_params = count_parameters(meta_base(config))
    grow_on_meta(recipe, config)  # every recipe error, before a single weight is read
    tokenizer = load_tokenizer(recipe.base)
    grown = METHODS[recipe.method].grow(open_base(recipe.base, config, recipe.dtype), recipe)
    grown.generation_config = base_generation_config(recipe.base, grown)
    with atomic_dir(out_dir) as folder:
        save_model(grown, tokenizer, folder)
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        (folder / "README.md").write_text(model_card(recipe, grown, base_params))
    return Path(out_dir)


def base_generation_config(name: str, grown: PreTrainedModel) -> GenerationConfig:
    """The base's generation settings (eos ids, sampling defaults) carry over to the grown model."""
    try:
        return GenerationConfig.from_pretrained(resolve(name))
    except (OSError, ValueError):
        return grown.generation_config


def model_card(recipe: Recipe, grown: PreTrainedModel, base_params: int) -> str:
    total = count_parameters(grown)
    added = total - base_params
    kinds = [entry["kind"] for entry in getattr(grown.config, "layer_map", None) or []]
    stack = stack_letters(kinds)
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {recipe.base}",
        "tags: [midus, depth-up-scaling]",
        "---",
        f"# {recipe.method} growth of {recipe.base}",
        "",
        f"Grown with `midus` by the recipe in `{RECIPE_FILE}`.",
        "",
        *markdown_table(["", ""], [
            ["base", f"`{recipe.base}`"], ["method", f"`{recipe.method}`"], ["placement", f"`{recipe.placement}`"],
            ["new blocks", str(recipe.new_blocks)], ["layers", str(grown.config.num_hidden_layers)],
            ["parameters", f"{total:,}"], ["base parameters", f"{base_params:,}"],
            ["added parameters", f"{added:,} ({added / base_params:.2%} of the base)"]]),
    ]
    if stack:
        lines += ["", f"Stack (D decoder block, M memory block, P pkm block): `{stack}`"]
    if grown.config.model_type == "midus":
        lines += ["", "Load with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`."]
    return "\n".join(lines) + "\n"

