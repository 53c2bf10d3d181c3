"""Data for the analysis tests (their tiny models grow by model_helpers.grow)."""

import inspect

import torch


def token_batches(windows=4, seq_len=24, batch_size=2, seed=0, vocab=500):
    ids = torch.randint(5, vocab, (windows, seq_len), generator=torch.Generator().manual_seed(seed))
    return list(ids.split(batch_size))


def heldout_text() -> str:
    """Standard-library docstrings: text every Python install carries."""
    import collections, json as json_module, textwrap as textwrap_module  # noqa: E401

    docs = [inspect.getdoc(obj) for module in (collections, json_module, textwrap_module)
            for _, obj in inspect.getmembers(module)]
    return "\n\n".join(sorted({d for d in docs if d and len(d) > 40}))
