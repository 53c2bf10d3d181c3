"""What the analyses look into: the blocks of a model and their heads, per-head masks, retrieval
captured from a forward pass or replayed into one, and the held-out loss.

Everything works from the outside with forward hooks and the HML's `head_mask`, so the model code
stays as shipped:
- a memory head h is removed by `head_mask[h] = 0`, i.e. z_h = 0 (the HML multiplies each head's
  pooled latent by its mask);
- an attention head h of a decoder (or pkm) block is removed by zeroing its slice of the o_proj input
  (a forward pre-hook on o_proj scales every head's d_h columns by its mask);
- a retrieval is captured, or replaced by a recorded one, with a forward hook on the product-key
  module (`memory.retrieval` of an HML, `mlp.retrieval` of a pkm block), whose output is (slots, weights).
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..loss import mean_nll
from ..parameters import layer_kind
from ..report import KIND_LETTERS

NEGLIGIBLE_LOSS = 1e-4  # loss changes (nats per token) below this count as none


@dataclass
class Block:
    """One layer of the stack, as the analyses see it."""

    index: int
    kind: str  # decoder | memory | pkm
    new: bool  # added by growth (from config.layer_map; False for a plain checkpoint)
    source: int | None  # the base block it was copied from, when known
    layer: nn.Module
    heads: int  # query heads (attention heads, or the HML's heads: one per attention head)
    head_dim: int

    @property
    def label(self) -> str:
        return f"{self.index} {KIND_LETTERS[self.kind]}{'*' if self.new else ''}"

    @property
    def retrieval(self) -> nn.Module | None:
        """The product-key module whose output is (slots, weights), for memory and pkm blocks."""
        if self.kind == "memory":
            return self.layer.memory.retrieval
        if self.kind == "pkm":
            return self.layer.mlp.retrieval
        return None

    def describe(self) -> dict:
        return {"layer": self.index, "kind": self.kind, "new": self.new, "source": self.source, "label": self.label}


def blocks(model: nn.Module) -> list[Block]:
    """Every layer of a MIDUS or plain Llama-family causal LM, with its kind and provenance."""
    config = model.config
    layer_map = getattr(config, "layer_map", None) or [{} for _ in model.model.layers]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    out = []
    for index, (layer, entry) in enumerate(zip(model.model.layers, layer_map)):
        out.append(Block(index, layer_kind(layer), bool(entry.get("new", False)), entry.get("source", index), layer, heads, head_dim))
    return out


def memory_blocks(model: nn.Module) -> list[Block]:
    return [block for block in blocks(model) if block.kind == "memory"]


def is_hive(block: Block) -> bool:
    """A memory block whose values are HIVE's: a latent bank and per-head projections P_h."""
    values = block.layer.memory.values
    return hasattr(values, "proj") and hasattr(values, "latent_dim")


def retrieval_blocks(model: nn.Module) -> list[Block]:
    return [block for block in blocks(model) if block.retrieval is not None]


# --- head masks ------------------------------------------------------------------------------------

def _scale_heads(mask: torch.Tensor, heads: int):
    def pre_hook(module, args):
        (x, *rest) = args
        scaled = x.unflatten(-1, (heads, -1)) * mask.to(x.dtype).view(heads, 1)
        return (scaled.flatten(-2), *rest)

    return pre_hook


@contextmanager
def head_masks(model_blocks: Iterable[Block], masks: dict[int, torch.Tensor]) -> Iterator[None]:
    """Multiply each head's contribution by masks[layer][h] for the layers in `masks`: z_h in memory
    blocks, the attention head's output before o_proj elsewhere. Gradients flow to the masks."""
    handles, memories = [], []
    try:
        for block in model_blocks:
            if block.index not in masks:
                continue
            mask = masks[block.index]
            if block.kind == "memory":
                memories.append(block.layer.memory)
                block.layer.memory.head_mask = mask
            else:
                handles.append(block.layer.self_attn.o_proj.register_forward_pre_hook(_scale_heads(mask, block.heads)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for memory in memories:
            memory.head_mask = None


# --- retrieval -------------------------------------------------------------------------------------

Retrieval = tuple[torch.Tensor, torch.Tensor]  # slots, weights: [N, H, k] over the flattened positions


@contextmanager
def captured_retrieval(model_blocks: Iterable[Block]) -> Iterator[dict[int, Retrieval]]:
    """Yield a dict that each forward pass fills with every retrieval block's last (slots, weights)."""
    captured, handles = {}, []

    def capture(index):
        def hook(module, args, output):
            captured[index] = (output[0].detach(), output[1].detach())
        return hook

    try:
        for block in model_blocks:
            if block.retrieval is not None:
                handles.append(block.retrieval.register_forward_hook(capture(block.index)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replayed_retrieval(model_blocks: Iterable[Block], recorded: dict[int, Retrieval]) -> Iterator[None]:
    """Replace the retrieval of every block in `recorded` by the recorded (slots, weights)."""
    handles = []
    try:
        for block in model_blocks:
            if block.index in recorded:
                handles.append(block.retrieval.register_forward_hook(lambda m, a, o, r=recorded[block.index]: r))
        yield
    finally:
        for handle in handles:
            handle.remove()


# --- loss ------------------------------------------------------------------------------------------

def token_nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of a batch of full windows [B, T] (in float32 at least), differentiable."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least float32
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")


def scored_tokens(batches: list[torch.Tensor]) -> int:
    return sum(ids[:, 1:].numel() for ids in batches)


def mean_loss(model: nn.Module, batches: list[torch.Tensor], desc: str | None = None, progress: bool = False) -> float:
    """Mean next-token NLL over all windows (`midus.loss.mean_nll`, summed in float64 as before)."""
    batches = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)
    return mean_nll(batches, lambda ids: (token_nll(model, ids).double(), ids[:, 1:].numel()))


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of `model` asks for gradients inside (the analyses differentiate masks only)."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        model.requires_grad_(False)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
