"""Fixed retrieval: how head-specific HIVE's value realisation is.

Every memory block's retrieval (slots and weights of each head) is recorded on the held-out text
and replayed unchanged; only the way the retrieved latents z_h become the block's output changes:

    m = sum_h P_h^T z_h                     the model (variant `identity`: must equal the baseline)
    m = sum_h P_{pi(h)}^T z_h               another head's projection: cyclic shifts, random derangements
    m = sum_h Pbar^T z_h, Pbar = mean_h P_h a shared projection
    m = 0                                   the memory block's output removed (variant `zero`)

One block is changed at a time; with retrieval fixed in every memory block, the later blocks read
the same memory slots, so the loss change measures the value realisation alone. The ratio
(permuted - baseline) / (zero - baseline) says how much of the memory's effect is lost when a head's
latent is realised by another head's projection: near 1, P_h is head-specific; near 0, interchangeable.
"""

from contextlib import contextmanager

import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from ..report import Report
from .probes import NEGLIGIBLE_LOSS, Block, captured_retrieval, is_hive, memory_blocks, replayed_retrieval, scored_tokens, token_nll
from .value_retraining import ValueRetraining

SCHEMA = "midus.analyze.fixed_retrieval/1"


class Variant(BaseModel):
    name: str = Field(description="identity | shift-s | random-i | shared-mean | zero")
    kind: str = Field(description="identity | cyclic | random | shared | zero")
    permutation: list[int] | None = Field(description="head h is realised through P_{permutation[h]}")
    loss: float
    delta: float = Field(description="loss - baseline loss")


class BlockFixedRetrieval(BaseModel):
    layer: int
    label: str
    variants: list[Variant]
    memory_effect: float = Field(description="delta of `zero`: what the block's memory output is worth")
    permuted_delta: float | None = Field(description="mean delta of the non-identity permutations (None: one head)")
    shared_delta: float = Field(description="delta of the shared (mean) projection")
    head_specificity: float | None = Field(description="permuted_delta / memory_effect (None: removing the memory does not raise the loss)")
    shared_specificity: float | None = Field(description="shared_delta / memory_effect (None: removing the memory does not raise the loss)")


class FixedRetrieval(Report, schema=SCHEMA):
    baseline_loss: float
    tokens: int
    blocks: list[BlockFixedRetrieval]
    skipped: list[str] = Field(default_factory=list, description="memory blocks not analysed, and why")
    value_retraining: ValueRetraining | None = Field(None, description="the optional retraining of the value path")


def derangement(heads: int, generator: torch.Generator) -> list[int]:
    """A random permutation without fixed points (every head takes another head's projection)."""
    while True:
        perm = torch.randperm(heads, generator=generator)
        if not (perm == torch.arange(heads)).any():
            return perm.tolist()


def variant_specs(heads: int, permutations: int, seed: int) -> list[tuple[str, str, list[int] | None]]:
    """(name, kind, permutation) of every variant for a block with `heads` heads."""
    specs = [("identity", "identity", list(range(heads)))]
    shifts = sorted({1, heads // 2} - {0}) if heads > 1 else []
    specs += [(f"shift-{s}", "cyclic", [(h + s) % heads for h in range(heads)]) for s in shifts]
    if heads > 1:
        generator = torch.Generator().manual_seed(seed)
        specs += [(f"random-{i + 1}", "random", derangement(heads, generator)) for i in range(permutations)]
    return specs + [("shared-mean", "shared", None), ("zero", "zero", None)]


def realised_weight(weight: torch.Tensor, heads: int, kind: str, permutation: list[int] | None) -> torch.Tensor:
    """The Linear(H*r -> d) weight whose head-h block is P_{pi(h)}, the mean block, or zero."""
    blocks = weight.unflatten(1, (heads, -1))  # [d, H, r]: blocks[:, h] = P_h^T
    if kind == "zero":
        return torch.zeros_like(weight)
    if kind == "shared":
        return blocks.mean(1, keepdim=True).expand_as(blocks).reshape_as(weight).contiguous()
    return blocks[:, permutation].reshape_as(weight).contiguous()


@contextmanager
def projection_weight(block: Block, weight: torch.Tensor):
    """The block's HIVE projection temporarily holds `weight`."""
    proj = block.layer.memory.values.proj
    original = proj.weight.data
    proj.weight.data = weight
    try:
        yield
    finally:
        proj.weight.data = original


@torch.no_grad()
def fixed_retrieval_analysis(model, batches: list[torch.Tensor], *, permutations: int = 3, seed: int = 0,
                             progress: bool = True) -> FixedRetrieval:
    """Loss of every variant of every HIVE memory block, with all memory retrievals fixed."""
    memory = memory_blocks(model)
    hive = [block for block in memory if is_hive(block)]
    skipped = [f"{block.label}: values {model.config.memory['values']!r} have no per-head projections P_h"
               for block in memory if not is_hive(block)]
    specs = {block.index: variant_specs(block.heads, permutations, seed + block.index) for block in hive}
    nll = {block.index: [0.0] * len(specs[block.index]) for block in hive}
    baseline = 0.0
    passes = len(batches) * (1 + sum(len(s) for s in specs.values()))
    bar = tqdm(total=passes, desc="fixed retrieval", unit="pass", disable=not progress)
    for ids in batches:
        with captured_retrieval(memory) as recorded:
            baseline += token_nll(model, ids).item()
        bar.update()
        with replayed_retrieval(memory, dict(recorded)):
            for block in hive:
                for i, (_, kind, perm) in enumerate(specs[block.index]):
                    weight = realised_weight(block.layer.memory.values.proj.weight, block.heads, kind, perm)
                    with projection_weight(block, weight):
                        nll[block.index][i] += token_nll(model, ids).item()
                    bar.update()
    bar.close()
    tokens = scored_tokens(batches)
    baseline /= tokens
    results = [block_result(block, specs[block.index], [v / tokens for v in nll[block.index]], baseline) for block in hive]
    return FixedRetrieval(baseline_loss=baseline, tokens=tokens, blocks=results, skipped=skipped)


def block_result(block: Block, specs, losses: list[float], baseline: float) -> BlockFixedRetrieval:
    variants = [Variant(name=name, kind=kind, permutation=perm, loss=loss, delta=loss - baseline)
                for (name, kind, perm), loss in zip(specs, losses)]
    by_kind = lambda kind: [v.delta for v in variants if v.kind == kind]  # noqa: E731
    permuted = by_kind("cyclic") + by_kind("random")
    effect, shared = by_kind("zero")[0], by_kind("shared")[0]
    permuted_delta = sum(permuted) / len(permuted) if permuted else None
    has_effect = effect > NEGLIGIBLE_LOSS  # ratios of a memory that does not lower the loss mean nothing
    return BlockFixedRetrieval(
        layer=block.index, label=block.label, variants=variants, memory_effect=effect, permuted_delta=permuted_delta,
        shared_delta=shared,
        head_specificity=permuted_delta / effect if has_effect and permuted_delta is not None else None,
        shared_specificity=shared / effect if has_effect else None,
    )
