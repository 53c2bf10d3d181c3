"""A comparison's charts: CPT loss curves of every method on one chart, added parameters vs perplexity,
accuracy per task with error bars, decode latency bars. Each is written to a temporary name and
renamed, so no PNG is ever half-written."""

from pathlib import Path

from ..growth.registry import METHODS
from ..plotting import save_figure, subplots
from .report import CompareReport, label

BASE_COLOR = "black"


def color(method: str, default: str | None = None) -> str | None:
    """The method's plot colour (the registry's), black for the base."""
    if method == "base":
        return BASE_COLOR
    return METHODS[method].color if method in METHODS else default


def loss_curves(report: CompareReport, path: Path) -> Path | None:
    first = report.experiment["seeds"][0]
    runs = [r for r in report.runs if r.seed == first and r.cpt is not None and r.cpt.curve]
    if not runs:
        return None
    figure, axis = subplots(figsize=(8, 5))
    for r in runs:
        line_color = color(r.method)
        axis.plot(*zip(*r.cpt.curve), color=line_color, linewidth=1.2, label=f"{label(r.method)} train")
        if r.cpt.eval_curve:
            axis.plot(*zip(*r.cpt.eval_curve), "o--", color=line_color, markersize=4, linewidth=0.8)
    axis.set_xlabel("CPT tokens")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title(f"Continued pre-training, seed {first}: training loss (solid), held-out loss (dashed)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def memory_use(report: CompareReport, path: Path) -> Path | None:
    """The memory probe over CPT: mean share of the residual stream, and the loss change without the memory."""
    first = report.experiment["seeds"][0]
    runs = [r for r in report.runs if r.seed == first and r.cpt is not None and r.cpt.memory_curve]
    if not runs:
        return None
    figure, (share, removal) = subplots(1, 2, figsize=(11, 4.5))
    for r in runs:
        tokens, shares, removals = zip(*r.cpt.memory_curve)
        share.plot(tokens, shares, "o-", color=color(r.method), label=label(r.method))
        removal.plot(tokens, removals, "o-", color=color(r.method), label=label(r.method))
    share.set_ylabel("memory share ||m|| / ||x|| (mean over blocks)")
    removal.set_ylabel("held-out Δloss, every memory removed (nats/token)")
    for axis in (share, removal):
        axis.set_xlabel("CPT tokens")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Does the memory get used? Seed {first}, at every CPT evaluation")
    return save_figure(figure, path)


def params_vs_perplexity(report: CompareReport, path: Path) -> Path | None:
    kind = next((k for k in ("document", "rolling") if any(k in r.perplexity for r in report.rows)), None)
    runs = [r for r in report.rows if r.params_added is not None and kind in r.perplexity and r.method != "base"]
    if not runs:
        return None
    figure, axis = subplots(figsize=(7, 5))
    for i, r in enumerate(sorted(runs, key=lambda r: (r.params_added, r.perplexity[kind]))):
        axis.errorbar(r.params_added / 1e3, r.perplexity[kind], yerr=r.perplexity_spread.get(kind), fmt="o",
                      markersize=8, capsize=4, color=color(r.method))
        axis.annotate(label(r.method), (r.params_added / 1e3, r.perplexity[kind]), textcoords="offset points",
                      xytext=(8, 8 if i % 2 else -12), fontsize=9)
    axis.margins(x=0.15, y=0.3)
    base = report.row("base")
    axis.set_xlabel("added parameters (thousands)")
    axis.set_ylabel(f"held-out perplexity ({kind}), mean over seeds ↓")
    axis.set_title("Added parameters vs held-out perplexity after equal-token CPT"
                   + (f"\n(the base before CPT: {base.perplexity[kind]:.2f})" if base and kind in base.perplexity else ""),
                   fontsize=10)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def accuracy_bars(report: CompareReport, path: Path) -> Path | None:
    """Per task, one bar per method: the mean over seeds, whiskers lm-eval's standard error of one run
    (or half the range over seeds, where larger)."""
    tasks = list(dict.fromkeys(t for r in report.rows for t in r.tasks))
    rows = [r for r in report.rows if r.tasks]
    if not tasks or not rows:
        return None
    figure, axis = subplots(figsize=(max(6, 1.6 * len(tasks) * len(rows) / 3), 4.5))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        values = [100 * r.tasks[t].value if t in r.tasks else 0 for t in tasks]
        errors = [100 * max(r.tasks[t].stderr or 0, r.task_spread.get(t, 0)) if t in r.tasks else 0 for t in tasks]
        axis.bar([j + (i - (len(rows) - 1) / 2) * width for j in range(len(tasks))], values, width, yerr=errors,
                 capsize=2, color=color(r.method), label=label(r.method))
    axis.set_xticks(range(len(tasks)), [f"{t}\n({rows[0].tasks[t].metric})" if t in rows[0].tasks else t for t in tasks],
                    fontsize=8)
    axis.set_ylabel("score (%) ↑")
    axis.set_title("Per task, mean over seeds; whiskers: standard error of one run or half the seed range", fontsize=9)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=7, ncol=min(4, len(rows)))
    return save_figure(figure, path)


def latency_bars(report: CompareReport, path: Path) -> Path | None:
    methods = [m for m in ["base", *[m["name"] for m in report.experiment["methods"]]] if m in report.bench]
    if not methods:
        return None
    figure, axis = subplots(figsize=(8, 4.5))
    figures = [report.bench[m] for m in methods]
    values = [f.decode_ms_per_token for f in figures]
    errors = [[f.decode_ms_per_token - f.decode_ms_low for f in figures],
              [f.decode_ms_high - f.decode_ms_per_token for f in figures]]
    axis.bar(range(len(methods)), values, yerr=errors, capsize=4, color=[color(m, "tab:blue") for m in methods])
    axis.set_xticks(range(len(methods)), [label(m) for m in methods], rotation=15)
    reference = report.bench.get(report.reference)
    for i, value in enumerate(values):
        if reference is not None:
            axis.annotate(f"{value / reference.decode_ms_per_token:.2f}×", (i, value / 2), ha="center", va="center",
                          fontsize=9, color="white", fontweight="bold")
    axis.set_ylabel("decode latency (ms / token) ↓")
    axis.set_title("Decode latency with the KV cache (median over rounds, whiskers: lowest and highest round); "
                   f"× = ratio to {label(report.reference)}", fontsize=9)
    axis.grid(alpha=0.3, axis="y")
    return save_figure(figure, path)


def before_after(report: CompareReport, path: Path) -> Path | None:
    """Wiki-PPL per method at insertion and after CPT (first seed): who keeps the base, who gains."""
    first = report.experiment["seeds"][0]
    runs = [r for r in report.runs if r.seed == first and not r.probe and r.before_cpt is not None
            and "document" in r.before_cpt.perplexity and "document" in r.perplexity]
    if not runs:
        return None
    figure, axis = subplots(figsize=(8, 4.5))
    x = range(len(runs))
    axis.bar([i - 0.2 for i in x], [r.before_cpt.perplexity["document"] for r in runs], width=0.4, color="lightgray",
             edgecolor="black", label="before CPT (at insertion)")
    axis.bar([i + 0.2 for i in x], [r.perplexity["document"] for r in runs], width=0.4,
             color=[color(r.method, "tab:green") for r in runs], label="after CPT")
    base = next((r for r in report.runs if r.method == "base"), None)
    if base is not None and "document" in base.perplexity:
        axis.axhline(base.perplexity["document"], color="black", linestyle="--", linewidth=1, label="base")
    axis.set_xticks(list(x), [label(r.method) for r in runs], rotation=15)
    axis.set_ylabel("Wiki-PPL (per document) ↓")
    axis.set_title("Held-out perplexity before and after CPT")
    axis.legend()
    return save_figure(figure, path)


def write_plots(report: CompareReport, out_dir: Path) -> list[Path]:
    made = [loss_curves(report, out_dir / "cpt_loss.png"), params_vs_perplexity(report, out_dir / "params_vs_ppl.png"),
            before_after(report, out_dir / "before_after_ppl.png"),
            accuracy_bars(report, out_dir / "accuracy.png"), latency_bars(report, out_dir / "latency.png"),
            memory_use(report, out_dir / "memory.png")]
    return [p for p in made if p is not None]
