"""The run's loss plot: training and held-out loss, and, for a model with memory, what the memory
contributes at every evaluation (its share of the residual stream and the loss change without it)."""

from pathlib import Path

from ..plotting import save_figure, subplots

MEMORY_PANELS = (("eval_memory_share/", "memory share ||m|| / ||x||"),
                 ("eval_memory_removal/", "held-out loss change without\nthe memory (nats/token)"))


def memory_curves(evals: list[tuple[float, dict]], prefix: str) -> dict[str, list[tuple[float, float]]]:
    """{block label: [(tokens, value)]} of one `eval_memory_*` kind, blocks in layer order, `mean`/`all` last."""
    blocks = {key.removeprefix(prefix) for _, record in evals for key in record if key.startswith(prefix)}
    ordered = sorted((b for b in blocks if b.isdigit()), key=int) + sorted(b for b in blocks if not b.isdigit())
    return {block: [(tokens, record[prefix + block]) for tokens, record in evals if prefix + block in record]
            for block in ordered}


def plot_loss(records: list[dict], path: Path) -> None:
    """Training loss per log step and held-out loss per evaluation, against training tokens."""
    train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train"]
    if not train:
        return
    tokens_per_step = train[-1][0] / max(1, next(r["step"] for r in reversed(records) if r.get("kind") == "train"))
    evals = [(r["step"] * tokens_per_step, r) for r in records if r.get("kind") == "eval"]
    panels = [(prefix, label, curves) for prefix, label in MEMORY_PANELS if (curves := memory_curves(evals, prefix))]
    figure, axes = subplots(1 + len(panels), 1, figsize=(7, 4 + 2.5 * len(panels)), sharex=True, squeeze=False)
    axis = axes[0, 0]
    axis.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        axis.plot([tokens for tokens, _ in evals], [r["eval_loss"] for _, r in evals], "o-", label="held-out loss")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.legend()
    for (prefix, label, curves), row in zip(panels, axes[1:]):
        for block, points in curves.items():
            summary = not block.isdigit()
            row[0].plot(*zip(*points), "o-" if summary else ".-", color="black" if summary else None,
                        linewidth=2 if summary else 0.8, label=block if summary else f"layer {block}")
        row[0].set_ylabel(label)
        row[0].legend(fontsize=6, ncol=4)
    for row in axes:
        row[0].grid(alpha=0.3)
    axes[-1, 0].set_xlabel("training tokens")
    save_figure(figure, path)
