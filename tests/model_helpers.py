"""Helpers shared by the tests that build MIDUS models."""

import torch


def random_memory(model, scale=0.1, seed=0):
    """Give the zero-initialised HIVE projections values, so the memory blocks change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "memory.values.proj" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model
