"""The shipped recipes: all valid; the tiny ones grow the example base to the same depth."""

from pathlib import Path

import pytest
import torch

from midus import Recipe
from midus.recipe import METHODS
from model_helpers import grow

RECIPES = Path(__file__).parents[1] / "recipes"
GROWTH_RECIPES = sorted(p for folder in ("paper-1b", "paper-8b", "tiny") for p in (RECIPES / folder).glob("*.yaml"))


def test_every_method_has_its_recipes():
    for folder in ("paper-1b", "paper-8b", "tiny"):
        assert {p.stem for p in (RECIPES / folder).glob("*.yaml")} == set(METHODS), folder


@pytest.mark.parametrize("path", GROWTH_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_is_valid(path):
    recipe = Recipe.from_yaml(path)
    assert recipe.method == path.stem
    L, K = {"paper-1b": (16, 8), "paper-8b": (32, 16), "tiny": (4, 2)}[path.parent.name]
    if recipe.method == "none":
        assert recipe.new_blocks == 0
    else:
        assert recipe.new_blocks == K
    if recipe.method == "solar":
        assert L - 2 * recipe.solar_overlap == K
    assert Recipe.parse(__import__("yaml").safe_load(recipe.to_yaml())) == recipe  # the saved copy round-trips


@pytest.mark.parametrize("method", sorted(METHODS))
def test_tiny_recipe_grows_the_example_base(tiny_base, method):
    recipe = Recipe.from_yaml(RECIPES / "tiny" / f"{method}.yaml")
    fields = recipe.model_dump(exclude_none=True, exclude={"base"})  # every field, so grow's tiny defaults yield
    if method == "lesa":
        fields["lesa"]["epochs"] = 1  # the paper's 10 epochs are tested in tests/growth
    grown = grow(tiny_base, **fields)
    assert grown.config.num_hidden_layers == (4 if method == "none" else 6)
    with torch.no_grad():
        assert torch.isfinite(grown(torch.tensor([[5, 6, 7, 8]])).logits).all()
