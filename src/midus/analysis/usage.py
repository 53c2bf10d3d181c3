"""Memory usage: which slots each head retrieves on held-out text, and how peaked its weights are.

Per head h of a memory (or pkm) block with S = n^2 slots, over N tokens with k slots each:
    share_used          |{s : c_h(s) > 0}| / S, c_h(s) = times slot s was among the head's top-k
    entropy             H(p_h), p_h(s) = c_h(s) / (N k)        in [0, log S]
    normalized_entropy  H(p_h) / log S                         in [0, 1]; 1 = every slot equally often
    effective_slots     exp H(p_h)
    mean_max_weight     mean over tokens of max_t w_h,t        in [1/k, 1]
    weight_entropy      mean over tokens of H(w_h)             in [0, log k]; also / log k
    jaccard[h][g]       |used_h & used_g| / |used_h | used_g|  in [0, 1]
Heads of a HIVE block index one shared bank U, so overlapping slot sets mean that heads read the same
latent rows; with per-head tables (values: per-head) the overlap is of slot ids only.
"""

import math

import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from ..report import Report
from .probes import Block, captured_retrieval, retrieval_blocks

SCHEMA = "midus.analyze.usage/1"
WEIGHT_BINS = 20  # histogram of each token's max weight over [0, 1]


class HeadUsage(BaseModel):
    share_used: float
    entropy: float
    normalized_entropy: float
    effective_slots: float
    mean_max_weight: float
    weight_entropy: float
    normalized_weight_entropy: float


class BlockUsage(BaseModel):
    layer: int
    label: str
    kind: str = Field(description="memory | pkm")
    slots: int = Field(description="S = n^2 slots per head")
    topk: int
    tokens: int
    heads: list[HeadUsage]
    share_used_any_head: float = Field(description="share of slots retrieved by at least one head")
    jaccard: list[list[float]] = Field(description="[H][H] Jaccard overlap of the heads' used-slot sets")
    mean_jaccard: float | None = Field(description="mean over pairs of different heads (None: one head)")
    count_histogram: dict[str, float] = Field(
        description="share of (head, slot) pairs by retrieval count: '0', '1', '2-3', '4-7', ... (powers of two)")
    max_weight_histogram: list[float] = Field(description=f"share of (token, head) by max weight, {WEIGHT_BINS} bins over [0, 1]")


class MemoryUsage(Report, schema=SCHEMA):
    tokens: int
    blocks: list[BlockUsage]


class UsageCounter:
    """Accumulates one block's retrievals, batch by batch."""

    def __init__(self, heads: int, slots: int, topk: int):
        self.heads, self.slots, self.topk = heads, slots, topk
        self.counts = torch.zeros(heads, slots, dtype=torch.long)
        self.max_weight = torch.zeros(heads, dtype=torch.float64)
        self.weight_entropy = torch.zeros(heads, dtype=torch.float64)
        self.max_weight_histogram = torch.zeros(WEIGHT_BINS, dtype=torch.float64)
        self.tokens = 0

    def add(self, slots: torch.Tensor, weights: torch.Tensor) -> None:
        """slots, weights [N, H, k] of N tokens."""
        slots, weights = slots.cpu().long(), weights.detach().cpu().double()
        offsets = torch.arange(self.heads).view(1, -1, 1) * self.slots
        self.counts += torch.bincount((slots + offsets).flatten(), minlength=self.heads * self.slots).view(self.heads, self.slots)
        top = weights.max(-1).values  # [N, H]
        self.max_weight += top.sum(0)
        self.weight_entropy += -(weights * weights.clamp_min(1e-300).log()).sum(-1).sum(0)
        self.max_weight_histogram += torch.histc(top.flatten(), bins=WEIGHT_BINS, min=0.0, max=1.0)
        self.tokens += slots.shape[0]

    def heads_usage(self) -> list[HeadUsage]:
        counts = self.counts.double()
        p = counts / counts.sum(-1, keepdim=True)
        entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
        log_slots, log_k = math.log(self.slots), math.log(self.topk)
        return [
            HeadUsage(share_used=float((self.counts[h] > 0).double().mean()), entropy=float(entropy[h]),
                      normalized_entropy=float(entropy[h] / log_slots) if log_slots else 0.0,
                      effective_slots=float(entropy[h].exp()), mean_max_weight=float(self.max_weight[h] / self.tokens),
                      weight_entropy=float(self.weight_entropy[h] / self.tokens),
                      normalized_weight_entropy=float(self.weight_entropy[h] / self.tokens / log_k) if log_k else 0.0)
            for h in range(self.heads)
        ]

    def jaccard(self) -> torch.Tensor:
        used = (self.counts > 0).double()
        inter = used @ used.T
        sizes = used.sum(-1)
        union = sizes.view(-1, 1) + sizes.view(1, -1) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))

    def count_histogram(self) -> dict[str, float]:
        counts = self.counts.flatten()
        total = counts.numel()
        histogram = {"0": float((counts == 0).sum()) / total}
        low = 1
        while low <= int(counts.max()):
            high = 2 * low - 1
            name = str(low) if low == high else f"{low}-{high}"
            histogram[name] = float(((counts >= low) & (counts <= high)).sum()) / total
            low *= 2
        return histogram

    def result(self, block: Block) -> BlockUsage:
        jaccard = self.jaccard()
        off_diagonal = jaccard[~torch.eye(self.heads, dtype=torch.bool)]
        return BlockUsage(
            layer=block.index, label=block.label, kind=block.kind, slots=self.slots, topk=self.topk, tokens=self.tokens,
            heads=self.heads_usage(), share_used_any_head=float((self.counts.sum(0) > 0).double().mean()),
            jaccard=jaccard.tolist(), mean_jaccard=float(off_diagonal.mean()) if off_diagonal.numel() else None,
            count_histogram=self.count_histogram(),
            max_weight_histogram=(self.max_weight_histogram / self.max_weight_histogram.sum().clamp_min(1)).tolist(),
        )


def block_shape(block: Block) -> tuple[int, int, int]:
    """(heads, slots per head, top-k) of a memory or pkm block's product keys."""
    keys = block.retrieval.keys  # [H, 2, n, d_k/2]
    return keys.shape[0], keys.shape[2] ** 2, block.retrieval.topk


@torch.no_grad()
def memory_usage(model, batches: list[torch.Tensor], *, progress: bool = True) -> MemoryUsage:
    """Usage statistics of every memory and pkm block of `model` on `batches`."""
    memory = retrieval_blocks(model)
    counters = {block.index: UsageCounter(*block_shape(block)) for block in memory}
    with captured_retrieval(memory) as retrieved:
        for ids in tqdm(batches, desc="memory usage", unit="batch", disable=not progress):
            model(input_ids=ids, use_cache=False)
            for index, (slots, weights) in retrieved.items():
                counters[index].add(slots, weights)
    return MemoryUsage(tokens=sum(ids.numel() for ids in batches),
                       blocks=[counters[block.index].result(block) for block in memory])
