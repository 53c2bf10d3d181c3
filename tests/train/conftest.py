"""Fixtures for training tests: a tiny MIDUS model, a grown Llama with a layer map, local text, and
one uninterrupted reference run that the resume / DDP / fresh-process tests compare against."""

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from midus import Recipe
from midus.tiny import _sample_text
from midus.train import train
from midus.upscale import upscale_to_folder
from train_helpers import tiny_config

TINY_MEMORY = {"n_keys": 8, "topk": 4, "latent_dim": 16}


@contextmanager
def one_thread():
    """Tiny models train faster on one thread (and identically in every process of a test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def single_threaded(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses too
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_midus(tiny_base, tmp_path_factory):
    """The tiny base grown by 2 MIDUS memory blocks (top-heavy), stored in float32."""
    out = tmp_path_factory.mktemp("tiny-midus") / "midus"
    recipe = Recipe.parse({"base": str(tiny_base), "method": "midus", "new_blocks": 2, "dtype": "float32",
                           "memory": TINY_MEMORY})
    return upscale_to_folder(recipe, out)


@pytest.fixture(scope="session")
def tiny_grown_llama(tiny_base, tmp_path_factory):
    """The tiny base with block 1 copied after itself (o_proj and down_proj zeroed, LLaMA Pro style),
    a plain Llama whose config carries the layer map `midus upscale` writes."""
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    layers = base.model.layers
    import copy

    new = copy.deepcopy(layers[1])
    new.self_attn.o_proj.weight.data.zero_()
    new.mlp.down_proj.weight.data.zero_()
    layers.insert(2, new)
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index
    base.config.num_hidden_layers = len(layers)
    base.config.layer_map = [{"kind": "decoder", "source": s, "new": n} for s, n in [(0, False), (1, False), (1, True), (2, False), (3, False)]]
    out = tmp_path_factory.mktemp("tiny-grown-llama") / "grown"
    base.save_pretrained(out)
    (out / "tokenizer.json").write_bytes((Path(tiny_base) / "tokenizer.json").read_bytes())
    (out / "tokenizer_config.json").write_bytes((Path(tiny_base) / "tokenizer_config.json").read_bytes())
    return out


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
    with one_thread():
        return config, train(config), root / "run"
