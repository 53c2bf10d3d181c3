"""The loss curve of a run, from its metrics records."""

from pathlib import Path


def plot_loss(records: list[dict], path: Path) -> None:
    """Training loss per log step and held-out loss per evaluation, against training tokens."""
    train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train"]
    if not train:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens_per_step = train[-1][0] / max(1, next(r["step"] for r in reversed(records) if r.get("kind") == "train"))
    held_out = [(r["step"] * tokens_per_step, r["eval_loss"]) for r in records if r.get("kind") == "eval"]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(*zip(*train), label="train loss", linewidth=1)
    if held_out:
        axis.plot(*zip(*held_out), "o-", label="held-out loss")
    axis.set_xlabel("training tokens")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
