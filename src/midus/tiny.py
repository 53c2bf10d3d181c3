"""Tiny random Llama bases on disk, for examples and tests (no network)."""

import inspect
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .data.tokenizer import train_bpe_tokenizer


def sample_text() -> list[str]:
    """Docstrings of a few standard-library modules: text that every Python install carries."""
    import collections, json, pathlib, textwrap  # noqa: E401

    texts = []
    for module in (collections, json, pathlib, textwrap):
        for _, obj in inspect.getmembers(module):
            if (doc := inspect.getdoc(obj)) and len(doc) > 40:
                texts.append(doc)
    return sorted(set(texts))


def write_tiny_llama(out_dir: str | Path, *, layers: int = 4, hidden_size: int = 64, heads: int = 4,
                     kv_heads: int = 2, intermediate_size: int = 128, vocab_size: int = 512,
                     max_positions: int = 512, seed: int = 0, tokenizer=None) -> Path:
    """Write a randomly initialised LlamaForCausalLM with a BPE tokenizer to `out_dir`: `tokenizer`, or
    one of `vocab_size` trained on a few docstrings."""
    if tokenizer is None:
        tokenizer = train_bpe_tokenizer(sample_text(), vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
