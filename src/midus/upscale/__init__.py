"""Growing a base model: one file per method behind a small registry."""

from pathlib import Path

from transformers import PreTrainedModel

from ..checkpoint import atomic_dir, check_out_dir, load_base, save_model
from ..parameters import count_parameters
from ..recipe import RECIPE_FILE, Recipe
from . import midus  # noqa: F401  (each method module registers itself)
from .registry import METHODS


def upscale(base: "str | PreTrainedModel", recipe: Recipe) -> PreTrainedModel:
    """Grow `base` (a loaded model, or a hub id / folder) by `recipe`."""
    if isinstance(base, str):
        base, _ = load_base(base, recipe.dtype)
    return METHODS[recipe.method](base, recipe)


def upscale_to_folder(recipe: Recipe, out_dir: str | Path) -> Path:
    """Grow the recipe's base and write a complete checkpoint folder (or nothing, on any error)."""
    check_out_dir(out_dir)  # fail before the (slow) load
    base, tokenizer = load_base(recipe.base, recipe.dtype)
    base_params = count_parameters(base)
    grown = METHODS[recipe.method](base, recipe)
    del base
    with atomic_dir(out_dir) as folder:
        save_model(grown, tokenizer, folder)
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        (folder / "README.md").write_text(model_card(recipe, grown, base_params))
    return Path(out_dir)


def model_card(recipe: Recipe, grown: PreTrainedModel, base_params: int) -> str:
    total = count_parameters(grown)
    added = total - base_params
    kinds = [entry["kind"] for entry in getattr(grown.config, "layer_map", None) or []]
    stack = " ".join({"decoder": "D", "memory": "M", "pkm": "P"}[k] for k in kinds) if kinds else ""
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
        "| | |",
        "|---|---|",
        f"| base | `{recipe.base}` |",
        f"| method | `{recipe.method}` |",
        f"| placement | `{recipe.placement}` |",
        f"| new blocks | {recipe.new_blocks} |",
        f"| layers | {grown.config.num_hidden_layers} |",
        f"| parameters | {total:,} |",
        f"| base parameters | {base_params:,} |",
        f"| added parameters | {added:,} ({added / base_params:.2%} of the base) |",
    ]
    if stack:
        lines += ["", f"Stack (D decoder block, M memory block, P pkm block): `{stack}`"]
    if grown.config.model_type == "midus":
        lines += ["", "Load with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`."]
    return "\n".join(lines) + "\n"


__all__ = ["METHODS", "upscale", "upscale_to_folder"]
