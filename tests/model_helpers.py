"""Helpers shared by the tests that build models: tiny bases of every supported family, growing a base
by a recipe in one call, memory blocks that contribute."""

import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config

import midus
from midus import Recipe

FAMILIES = {
    # qwen2: q/k/v biases, tied embeddings, sliding window on the upper layers
    "qwen2": lambda common: Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=2,
                                        tie_word_embeddings=True),
    # qwen3: per-head q/k RMSNorm, head_dim != hidden / heads
    "qwen3": lambda common: Qwen3Config(**common, head_dim=32, tie_word_embeddings=True),
    # mistral: sliding window everywhere
    "mistral": lambda common: MistralConfig(**common, sliding_window=4),
}


TINY_MEMORY = {"n_keys": 8, "topk": 4, "latent_dim": 16}
TINY_PKM = {"n_keys": 8, "topk": 4, "pkm_heads": 2, "pkm_key_dim": 16}
TINY_LESA = {"epochs": 3, "hidden": 32}
# the fields each method needs to grow a 4-block tiny base to 6 blocks
METHOD_FIELDS = {
    "none": {},
    "solar": {"solar_overlap": 1},
    "llama-pro": {"new_blocks": 2},
    "lesa": {"new_blocks": 2, "lesa": TINY_LESA},
    "pkm": {"new_blocks": 2, "memory": TINY_PKM},
    "midus": {"new_blocks": 2, "memory": TINY_MEMORY},
}


def recipe(base_dir, method="midus", *, memory=None, lesa=None, **fields) -> Recipe:
    """The recipe growing the tiny `base_dir` by `method` with METHOD_FIELDS' tiny settings, in float32;
    `fields` (new_blocks, placement, seed, ...) replace those, and `memory` / `lesa` update their sections
    key by key ({"share_bank": True} keeps the tiny sizes)."""
    data = {"base": str(base_dir), "method": method, "dtype": "float32", **METHOD_FIELDS[method], **fields}
    for section, updates in (("memory", memory), ("lesa", lesa)):
        if updates is not None:
            data[section] = {**data.get(section, {}), **updates}
    return Recipe.parse(data)


def grow(base_dir, method="midus", **fields):
    """The tiny `base_dir` grown by `recipe(base_dir, method, **fields)`, in eval mode."""
    return midus.upscale(str(base_dir), recipe(base_dir, method, **fields)).eval()


def tokens(n=12, batch=2, seed=0, vocab=500):
    return torch.randint(5, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def random_memory(model, scale=0.1, seed=0):
    """Give the zero-initialised HIVE projections values, so the memory blocks change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "memory.values.proj" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model


def write_family_base(folder, family, tokenizer, seed=0):
    """A tiny random base of `family` whose biases and norms are not at their init values, so copying
    them (or not) shows."""
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(FAMILIES[family](common))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
