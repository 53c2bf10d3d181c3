"""The growth methods by name, each with its facts: how it grows a base and how reports show it."""

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedModel

from ..recipe import Recipe


@dataclass(frozen=True)
class Method:
    name: str  # the recipe's `method`
    recipe: type[Recipe]  # its recipe's class: the fields every recipe has, and its own section
    grow: Callable[..., PreTrainedModel]  # grow(base: BaseWeights, recipe: Recipe) -> the grown model
    display: str  # its name in tables and plots
    function_preserving: bool  # the grown model computes what the base does, before any training
    color: str  # its matplotlib colour in every plot


METHODS: dict[str, Method] = {}


def register(name: str, *, recipe: type[Recipe], display: str, function_preserving: bool, color: str):
    def decorator(grow):
        METHODS[name] = Method(name, recipe, grow, display, function_preserving, color)
        return grow

    return decorator
