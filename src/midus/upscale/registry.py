"""The growth methods by name: grow(base_model, recipe) -> grown model."""

from collections.abc import Callable

from transformers import PreTrainedModel

from ..recipe import Recipe

METHODS: dict[str, Callable[[PreTrainedModel, Recipe], PreTrainedModel]] = {}


def register(name: str):
    def decorator(grow):
        METHODS[name] = grow
        return grow

    return decorator
