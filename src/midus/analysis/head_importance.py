"""Head importance: how much the held-out loss rises when one head's contribution is removed.

Units, the same for both growth styles so they can be compared:
- memory head h (MIDUS memory block): its pooled latent is zeroed, z_h = 0, so P_h^T z_h vanishes;
- attention head h (decoder or pkm block, e.g. the copies of DUS): its output is zeroed before o_proj.

removal   L(mask_h = 0) - L, one pass over the data per head (exact, slow: blocks x heads passes)
gradient  E_batch |dL_batch / dmask_h| at mask = 1 (Michel et al., 2019), one backward pass per batch
taylor    -dL/dmask_h at mask = 1: the first-order estimate of the removal, signed
"""

import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from ..report import Report
from .probes import Block, blocks, frozen, head_masks, mean_loss, scored_tokens, token_nll

SCHEMA = "midus.analyze.head_importance/1"
UNITS = {"memory": "memory head: z_h = 0", "decoder": "attention head: output before o_proj = 0",
         "pkm": "attention head: output before o_proj = 0"}


class BlockImportance(BaseModel):
    layer: int
    kind: str = Field(description="decoder | memory | pkm")
    new: bool = Field(description="added by growth")
    source: int | None
    label: str
    unit: str = Field(description="what removing a head means in this block")
    removal: list[float] | None = Field(description="per head: loss rise when the head is removed (None: not measured)")
    block_removal: float | None = Field(description="loss rise when every head of the block is removed")
    gradient: list[float] = Field(description="per head: E_batch |dL/dmask_h| at mask = 1")
    taylor: list[float] = Field(description="per head: -dL/dmask_h at mask = 1, first-order estimate of `removal`")


class HeadImportance(Report, schema=SCHEMA):
    baseline_loss: float = Field(description="mean next-token NLL of the unchanged model")
    tokens: int = Field(description="scored tokens")
    all_memory_removal: float | None = Field(description="loss rise with every memory head removed (None: no memory block)")
    blocks: list[BlockImportance]
    rank_correlation: dict[str, dict[str, float | None]] = Field(
        description="Spearman correlations over all / memory / attention heads: gradient_vs_abs_removal "
                    "(gradient with |removal|) and taylor_vs_removal (signed); empty without removal")


def head_importance(model, batches: list[torch.Tensor], *, removal: bool = True, progress: bool = True) -> HeadImportance:
    """Removal and gradient importance of every head of every block of `model` on `batches`."""
    stack = blocks(model)
    baseline = mean_loss(model, batches, desc="baseline loss", progress=progress)
    signed, absolute = gradient_importance(model, stack, batches, progress)
    per_head, per_block, all_memory = {}, {}, None
    if removal:
        per_head, per_block, all_memory = removal_importance(model, stack, batches, baseline, progress)
    results = [
        BlockImportance(**block.describe(), unit=UNITS[block.kind], removal=per_head.get(block.index),
                        block_removal=per_block.get(block.index), gradient=absolute[block.index].tolist(),
                        taylor=(-signed[block.index]).tolist())
        for block in stack
    ]
    return HeadImportance(baseline_loss=baseline, tokens=scored_tokens(batches), all_memory_removal=all_memory,
                          blocks=results, rank_correlation=correlations(results) if removal else {})


def gradient_importance(model, stack: list[Block], batches, progress: bool) -> tuple[dict, dict]:
    """Per block: the token-weighted mean of dL_batch/dmask and of its absolute value, at mask = 1."""
    device = batches[0].device
    masks = {block.index: torch.ones(block.heads, device=device, requires_grad=True) for block in stack}
    signed = {block.index: torch.zeros(block.heads) for block in stack}
    absolute = {block.index: torch.zeros(block.heads) for block in stack}
    total = scored_tokens(batches)
    with frozen(model), head_masks(stack, masks):
        for ids in tqdm(batches, desc="gradient importance", unit="batch", disable=not progress):
            count = ids[:, 1:].numel()
            grads = torch.autograd.grad(token_nll(model, ids) / count, list(masks.values()))
            for index, grad in zip(masks, grads):
                signed[index] += grad.detach().float().cpu() * (count / total)
                absolute[index] += grad.detach().float().abs().cpu() * (count / total)
    return signed, absolute


def removal_importance(model, stack: list[Block], batches, baseline: float, progress: bool):
    """Loss rise per removed head, per removed block (all its heads), and with every memory head removed."""
    device = batches[0].device
    runs = [(block, head) for block in stack for head in range(block.heads)] + [(block, None) for block in stack]
    memory = [block for block in stack if block.kind == "memory"]
    per_head = {block.index: [0.0] * block.heads for block in stack}
    per_block, all_memory = {}, None
    bar = tqdm(total=len(runs) + bool(memory), desc="head removal", unit="pass", disable=not progress)
    for block, head in runs:
        mask = torch.zeros(block.heads, device=device)
        if head is not None:
            mask = torch.ones(block.heads, device=device).index_fill(0, torch.tensor([head], device=device), 0.0)
        with head_masks([block], {block.index: mask}):
            rise = mean_loss(model, batches) - baseline
        if head is None:
            per_block[block.index] = rise
        else:
            per_head[block.index][head] = rise
        bar.update()
    if memory:
        with head_masks(memory, {block.index: torch.zeros(block.heads, device=device) for block in memory}):
            all_memory = mean_loss(model, batches) - baseline
        bar.update()
    bar.close()
    return per_head, per_block, all_memory


def correlations(results: list[BlockImportance]) -> dict[str, dict[str, float | None]]:
    """Spearman correlations over all, memory and attention heads: the gradient estimate with the size
    of the removal effect, and the signed first-order estimate with the signed removal."""
    groups = {"all": results, "memory": [r for r in results if r.kind == "memory"],
              "attention": [r for r in results if r.kind != "memory"]}
    out = {"gradient_vs_abs_removal": {}, "taylor_vs_removal": {}}
    for name, group in groups.items():
        removal = [v for r in group for v in r.removal]
        out["gradient_vs_abs_removal"][name] = spearman([v for r in group for v in r.gradient], [abs(v) for v in removal])
        out["taylor_vs_removal"][name] = spearman([v for r in group for v in r.taylor], removal)
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when undefined."""
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.square().sum() * ry.square().sum()).sqrt()
    return None if denominator == 0 else float((rx * ry).sum() / denominator)


def average_ranks(values: list[float]) -> torch.Tensor:
    values = torch.tensor(values, dtype=torch.float64)
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=torch.float64)
    for value in values.unique():  # ties share the mean of their ranks
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def ranking(result: HeadImportance, measure: str = "removal") -> list[tuple[BlockImportance, int, float]]:
    """(block, head, value) for every head, most important first, by `removal` or `gradient`."""
    rows = [(block, head, value) for block in result.blocks for head, value in enumerate(getattr(block, measure) or [])]
    return sorted(rows, key=lambda row: -row[2])
