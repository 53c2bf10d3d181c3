"""Growing a base model: one file per method behind a small registry (`registry.METHODS`), and the
build that runs a recipe's method (`build.py`)."""

from . import lesa, llama_pro, midus, none, pkm, solar  # noqa: F401  (each method module registers itself)
from .build import grow_on_meta, meta_base, upscale, upscale_to_folder
from .registry import METHODS
from .weights import BaseWeights

__all__ = ["METHODS", "BaseWeights", "grow_on_meta", "meta_base", "upscale", "upscale_to_folder"]
