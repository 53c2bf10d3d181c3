"""Fixtures for training tests: a tiny MIDUS model, a grown Llama with a layer map, local text, and
one uninterrupted reference run that the resume / DDP / fresh-process tests compare against."""

import json
from pathlib import Path

import pytest

from midus import Recipe
from midus.tiny import _sample_text
from midus.train import train
from midus.growth import upscale_to_folder
from model_helpers import TINY_MEMORY
from train_helpers import tiny_config


@pytest.fixture(scope="session")
def tiny_midus(tiny_base, tmp_path_factory):
    """The tiny base grown by 2 MIDUS memory blocks (top-heavy), stored in float32."""
    out = tmp_path_factory.mktemp("tiny-midus") / "midus"
    recipe = Recipe.parse({"base": str(tiny_base), "method": "midus", "new_blocks": 2, "dtype": "float32",
                           "memory": TINY_MEMORY})
    return upscale_to_folder(recipe, out)


@pytest.fixture(scope="session")
def tiny_grown_llama(tiny_base, tmp_path_factory):
    """The tiny base grown by 2 LLaMA Pro blocks: a plain Llama whose config carries the layer map."""
    out = tmp_path_factory.mktemp("tiny-llama-pro") / "llama-pro"
    recipe = Recipe.parse({"base": str(tiny_base), "method": "llama-pro", "new_blocks": 2, "dtype": "float32"})
    return upscale_to_folder(recipe, out)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Standard-library docstrings, one JSON document per line (about 12k tokens)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in _sample_text()))
    return path


@pytest.fixture(scope="session")
def reference_run(tiny_midus, corpus, tmp_path_factory):
    """An uninterrupted run of the tiny MIDUS model: (config, final model folder, run folder)."""
    root = tmp_path_factory.mktemp("reference")
    config = tiny_config(tiny_midus, root / "run", {"files": [str(corpus)], "cache_dir": str(root / "cache")})
    return config, train(config), root / "run"
