"""Fixtures for training tests: a tiny MIDUS model, a grown Llama with a layer map, local text, and
one uninterrupted reference run that the resume / DDP / fresh-process tests compare against."""

import json
from pathlib import Path

import pytest

from midus.tiny import sample_text
from midus.train import train
from midus.growth import upscale_to_folder
from model_helpers import recipe
from train_helpers import tiny_config


@pytest.fixture(scope="session")
def tiny_midus(tiny_base, tmp_path_factory):
    """The tiny base grown by 2 MIDUS memory blocks (top-heavy), stored in float32."""
    out = tmp_path_factory.mktemp("tiny-midus") / "midus"
    return upscale_to_folder(recipe(tiny_base, "midus"), out)


@pytest.fixture(scope="session")
def tiny_grown_llama(tiny_base, tmp_path_factory):
    """The tiny base grown by 2 LLaMA Pro blocks: a plain Llama whose config carries the layer map."""
    out = tmp_path_factory.mktemp("tiny-llama-pro") / "llama-pro"
    return upscale_to_folder(recipe(tiny_base, "llama-pro"), out)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Standard-library docstrings, one JSON document per line (about 12k tokens)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in sample_text()))
    return path


@pytest.fixture(scope="session")
def reference_run(tiny_midus, corpus, tmp_path_factory):
    """An uninterrupted run of the tiny MIDUS model: (config, final model folder, run folder)."""
    root = tmp_path_factory.mktemp("reference")
    config = tiny_config(tiny_midus, root / "run", {"files": [str(corpus)], "cache_dir": str(root / "cache")})
    return config, train(config), root / "run"
