"""PNG figures of the analyses (matplotlib, Agg backend)."""

from pathlib import Path

from ..plotting import save_figure, subplots
from .fixed_retrieval import FixedRetrieval
from .head_importance import HeadImportance
from .usage import MemoryUsage

ANNOTATE_CELLS = 256  # write the value in each heatmap cell up to this many cells


def heatmap(ax, rows: list[list[float]], row_labels: list[str], title: str, cmap: str = "viridis") -> None:
    import numpy as np

    values = np.array(rows, dtype=float)
    image = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xticks(range(values.shape[1]))
    ax.set_xlabel("head")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    if values.size <= ANNOTATE_CELLS:
        for (i, j), value in np.ndenumerate(values):
            bright = image.norm(value) > 0.6  # dark text on the bright end of the colour map
            ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=6, color="black" if bright else "white")


def plot_head_importance(result: HeadImportance, path: Path) -> Path:
    """Blocks x heads heatmaps: removal (loss rise) and the gradient estimate."""
    panels = [("gradient", "gradient estimate E|dL/dmask_h|")]
    if any(block.removal is not None for block in result.blocks):
        panels.insert(0, ("removal", "loss rise when the head is removed"))
    labels = [block.label for block in result.blocks]
    height = 1.5 + 0.3 * len(labels)
    fig, axes = subplots(1, len(panels), figsize=(5.5 * len(panels), height), squeeze=False)
    for ax, (measure, title) in zip(axes[0], panels):
        heatmap(ax, [getattr(block, measure) for block in result.blocks], labels, title,
                cmap="magma" if measure == "removal" else "viridis")
    axes[0][0].set_ylabel("block (D/M/P: decoder/memory/pkm, *: new)")
    return save_figure(fig, path)


def plot_fixed_retrieval(result: FixedRetrieval, path: Path) -> Path:
    """Per memory block: loss change of each way of realising the (fixed) retrieved latents."""
    groups = [("identity", "P_h (identity)"), ("cyclic", "P_{h+s} (shifts)"), ("random", "P_pi(h) (random)"),
              ("shared", "mean P"), ("zero", "no memory")]
    fig, ax = subplots(figsize=(max(5.0, 1.6 * len(result.blocks) + 2), 3.5))
    width = 0.8 / len(groups)
    for g, (kind, label) in enumerate(groups):
        means = []
        for block in result.blocks:
            deltas = [v.delta for v in block.variants if v.kind == kind]
            means.append(sum(deltas) / len(deltas) if deltas else 0.0)
        ax.bar([i + (g - len(groups) / 2 + 0.5) * width for i in range(len(result.blocks))], means, width, label=label)
    ax.set_xticks(range(len(result.blocks)), [block.label for block in result.blocks])
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("memory block")
    ax.set_ylabel("loss change (retrieval fixed)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_usage(result: MemoryUsage, path: Path) -> Path:
    """Per memory block: how often slots are retrieved, how peaked the weights are, head overlap."""
    rows = len(result.blocks)
    fig, axes = subplots(rows, 3, figsize=(13, 2.8 * rows), squeeze=False)
    for (count_ax, weight_ax, overlap_ax), block in zip(axes, result.blocks):
        names = list(block.count_histogram)
        count_ax.bar(range(len(names)), list(block.count_histogram.values()))
        count_ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
        count_ax.set_title(f"{block.label}: retrievals per (head, slot)", fontsize=9)
        count_ax.set_ylabel("share of slots")
        bins = len(block.max_weight_histogram)
        weight_ax.bar([(i + 0.5) / bins for i in range(bins)], block.max_weight_histogram, width=1 / bins)
        weight_ax.axvline(1 / block.topk, color="gray", linestyle=":", linewidth=1)
        weight_ax.set_title(f"{block.label}: max top-{block.topk} weight per token (dotted: 1/k)", fontsize=9)
        weight_ax.set_xlim(0, 1)
        heatmap(overlap_ax, block.jaccard, [str(h) for h in range(len(block.jaccard))], f"{block.label}: Jaccard of used slots")
        overlap_ax.set_ylabel("head")
    return save_figure(fig, path, dpi=110)
