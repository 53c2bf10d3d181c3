"""Figures for the reports: matplotlib on the Agg backend (no display needed), PNGs never half-written."""

from pathlib import Path


def subplots(*args, **kwargs):
    """A new figure and its axes (`matplotlib.pyplot.subplots`'s arguments)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Lay the figure out, write it as a PNG to a temporary sibling renamed to `path` (none left on a
    failure), and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        figure.tight_layout()
        figure.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return path
