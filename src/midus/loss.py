"""The held-out loss every command measures: the mean next-token NLL over batches."""

from collections.abc import Callable, Iterable

import torch


@torch.no_grad()
def mean_nll(batches: Iterable, batch_loss: Callable, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> float:
    """Summed NLL over summed scored tokens, where `batch_loss(batch)` gives both for one batch.

    The sums are kept in the precision `batch_loss` gives (at least float32): the trainer's float32
    tensors stay float32, the analyses' float64 sum in float64. `reduce` sums the two totals over
    processes (distributed evaluation: each process has its shard)."""
    total = count = 0
    for batch in batches:
        nll, tokens = batch_loss(batch)
        total, count = total + nll.to(torch.promote_types(nll.dtype, torch.float32)), count + tokens
    total = torch.as_tensor(total)
    total, count = reduce(torch.stack([total, torch.as_tensor(count, dtype=total.dtype, device=total.device)]))
    return (total / count).item()
