"""Does the memory get used? Per memory (or pkm) block, on held-out batches:

    share    mean over tokens of ||m|| / ||x||: the memory's output m against the residual stream x it
             is added to (memory block: x is the block's input, m = HML(a); pkm block: x is the stream
             after attention, m = PKM(RMSNorm(x)))
    removal  L(the block's memory output set to 0) - L: the held-out loss change without it (nats/token)

plus `share/mean` over the blocks and `removal/all`, every memory removed at once. The trainer logs them
at every evaluation as `eval_memory_share/<layer>`, ..., `eval_memory_removal/all`.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..loss import mean_nll
from ..parameters import layer_kind

# (summed next-token NLL, scored tokens) of one batch, under the caller's precision and device
BatchLoss = Callable[[dict], tuple[torch.Tensor, torch.Tensor]]


def memory_sites(model: nn.Module) -> dict[int, tuple[nn.Module, nn.Module]]:
    """layer index -> (the norm whose input is the residual stream x, the memory module), for the
    memory and pkm blocks of a MIDUS model (LoRA-wrapped or not); empty for any other model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None) or []
    sites = {}
    for index, layer in enumerate(layers):
        kind = layer_kind(layer)
        if kind == "memory":
            sites[index] = (layer.input_layernorm, layer.memory)
        elif kind == "pkm":
            sites[index] = (layer.post_attention_layernorm, layer.mlp)
    return sites


@contextmanager
def recorded_shares(sites: dict[int, tuple[nn.Module, nn.Module]], sums: dict[int, torch.Tensor],
                    counts: dict[int, int]) -> Iterator[None]:
    """Adds each site's summed ||m|| / ||x|| over tokens to sums[index], and its tokens to counts[index]."""
    streams = {}

    def keep_stream(index):
        def hook(module, args):
            streams[index] = args[0].detach()
        return hook

    def add_share(index):
        def hook(module, args, output):
            x, m = streams.pop(index).float(), output.detach().float()
            ratio = m.norm(dim=-1) / x.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
            sums[index] = sums.get(index, 0) + ratio.sum()
            counts[index] = counts.get(index, 0) + ratio.numel()
        return hook

    with ExitStack() as hooks:
        for index, (norm, memory) in sites.items():
            hooks.callback(norm.register_forward_pre_hook(keep_stream(index)).remove)
            hooks.callback(memory.register_forward_hook(add_share(index)).remove)
        yield


@contextmanager
def removed(memories: Iterable[nn.Module]) -> Iterator[None]:
    """The memory modules' outputs replaced by zeros: their blocks without memory."""
    with ExitStack() as hooks:
        for memory in memories:
            hooks.callback(memory.register_forward_hook(lambda module, args, output: torch.zeros_like(output)).remove)
        yield


@torch.no_grad()
def memory_probe(model: nn.Module, batches: Iterable[dict], batch_loss: BatchLoss,
                 reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
    """The share and removal of every memory site of `model` over `batches` (re-iterable), as
    {"share/<layer>", "share/mean", "removal/<layer>", "removal/all"}; {} for a model without memory.
    `reduce` sums a tensor over processes (distributed evaluation: each process has its shard)."""
    sites = memory_sites(model)
    if not sites:
        return {}
    sums, counts = {}, {}
    with recorded_shares(sites, sums, counts):
        baseline = mean_nll(batches, batch_loss, reduce)
    shares = (reduce(torch.stack([torch.as_tensor(sums[index]).float() for index in sites]))
              / reduce(torch.tensor([float(counts[index]) for index in sites])))
    metrics = {f"share/{index}": share.item() for index, share in zip(sites, shares)}
    metrics["share/mean"] = shares.mean().item()
    for index, (_, memory) in sites.items():
        with removed([memory]):
            metrics[f"removal/{index}"] = mean_nll(batches, batch_loss, reduce) - baseline
    if len(sites) > 1:
        with removed(memory for _, memory in sites.values()):
            metrics["removal/all"] = mean_nll(batches, batch_loss, reduce) - baseline
    else:
        metrics["removal/all"] = metrics[f"removal/{next(iter(sites))}"]
    return metrics

