"""Tiny grown models and data for the analysis tests."""

import inspect

import torch

import midus
from midus import Recipe
from model_helpers import TINY_MEMORY


def grow(base_dir, method="midus", placement="top-heavy", new_blocks=2, **memory):
    fields = {"base": str(base_dir), "method": method, "new_blocks": new_blocks, "placement": placement, "dtype": "float32"}
    if method in ("midus", "pkm"):
        fields["memory"] = {**TINY_MEMORY, **memory}
    recipe = Recipe.parse(fields)
    return midus.upscale(str(base_dir), recipe).eval()


def token_batches(windows=4, seq_len=24, batch_size=2, seed=0, vocab=500):
    ids = torch.randint(5, vocab, (windows, seq_len), generator=torch.Generator().manual_seed(seed))
    return list(ids.split(batch_size))


def heldout_text() -> str:
    """Standard-library docstrings: text every Python install carries."""
    import collections, json as json_module, textwrap as textwrap_module  # noqa: E401

    docs = [inspect.getdoc(obj) for module in (collections, json_module, textwrap_module)
            for _, obj in inspect.getmembers(module)]
    return "\n\n".join(sorted({d for d in docs if d and len(d) > 40}))
