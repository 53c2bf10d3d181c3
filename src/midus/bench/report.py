"""The cost table: models side by side, with ratios to a reference measured in the same run.

JSON schema `midus.bench/2` (the pydantic models here and in measure.py are the reference):
    {"schema": "midus.bench/2",
     "settings": BenchSettings,        # device, dtype, batch, lengths, warm-up, repeats, seed
     "environment": {...},             # versions, device name, threads, interleaved, memory method
     "reference": str,                 # the model the ratios divide by (one of the models)
     "models": [{
        "name", "source" (folder|hub|recipe), "weights" (loaded|random), "model_type", "layers",
        "grown_from",                                              # its recipe's base, when known
        "params_total", "params_added",
        "train_peak_mb", "inference_peak_mb",                      # MiB, weights included
        "train_step_s", "prefill_s", "decode_s_per_token":         # seconds: {median, q1, q3, min, max, samples}
        "train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",   # from the medians
        "ratios": {metric: value / reference value | null},        # every metric of RATIO_METRICS
        "base": str | null,                                        # the benched model it was grown from
        "added_per_block": null | {"blocks": int,                  # layers minus the base's (> 0)
            "train_step_s", "prefill_s", "decode_s_per_token": Stat},  # (model - base) / blocks, run by run
        "added_ratios": {metric: added / reference's added | null}}]}  # per TIMING_METRICS
Ratios of timings use medians; a ratio is null when either figure is missing or the reference's is 0.
The added cost pairs run r of the model with run r of its base: when models take turns (the default),
both ran in the same round.
"""

from pathlib import Path

from pydantic import BaseModel, Field

from ..plotting import save_figure, subplots
from ..report import Report, markdown_table
from .measure import BenchSettings, Measurement, Stat

SCHEMA = "midus.bench/2"
TIMING_METRICS = ("train_step_s", "prefill_s", "decode_s_per_token")
RATIO_METRICS = (
    "params_total", "params_added", "train_peak_mb", "inference_peak_mb", "train_step_s", "prefill_s",
    "decode_s_per_token", "train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",
)


class AddedCost(BaseModel):
    """Seconds a model spends beyond its base, per added block, run by run."""

    blocks: int
    train_step_s: Stat
    prefill_s: Stat
    decode_s_per_token: Stat


class ModelBench(Measurement):
    ratios: dict[str, float | None] = Field(description="value / reference's value, per RATIO_METRICS")
    base: str | None = Field(None, description="the benched model this one was grown from")
    added_per_block: AddedCost | None = None
    added_ratios: dict[str, float | None] = Field(default_factory=dict, description="added cost per block / the "
                                                  "reference's, per TIMING_METRICS (where both have one)")


class BenchReport(Report, schema=SCHEMA):
    settings: BenchSettings
    environment: dict[str, str | bool | int | None]
    reference: str
    models: list[ModelBench]

    def to_markdown(self) -> str:
        return bench_markdown(self)

    def plot(self, path: str | Path) -> Path:
        return bench_chart(self, path)


def figure(m: Measurement, metric: str) -> float | None:
    """A metric's headline number: the median for timings, the value otherwise."""
    value = getattr(m, metric)
    return value.median if isinstance(value, Stat) else value


def ratios(m: Measurement, reference: Measurement) -> dict[str, float | None]:
    return {metric: _divide(figure(m, metric), figure(reference, metric)) for metric in RATIO_METRICS}


def same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def added_cost(m: Measurement, base: Measurement) -> AddedCost | None:
    blocks = m.layers - base.layers
    if blocks <= 0:
        return None

    def per_block(metric: str) -> Stat:
        mine, theirs = getattr(m, metric).samples, getattr(base, metric).samples
        return Stat.of([(x - y) / blocks for x, y in zip(mine, theirs)])

    return AddedCost(blocks=blocks, **{metric: per_block(metric) for metric in TIMING_METRICS})


def build_report(measurements: list[Measurement], reference: str, settings: BenchSettings, environment: dict) -> BenchReport:
    models = []
    for m in measurements:
        base = next((b for b in measurements if m.grown_from and b is not m and same_model(m.grown_from, b.name)), None)
        models.append(ModelBench(**m.model_dump(), ratios={}, base=base and base.name,
                                 added_per_block=base and added_cost(m, base)))
    ref = next(m for m in models if m.name == reference)
    for m in models:
        m.ratios = ratios(m, ref)
        if m.added_per_block is not None and ref.added_per_block is not None:
            m.added_ratios = {metric: _divide(getattr(m.added_per_block, metric).median,
                                              getattr(ref.added_per_block, metric).median) for metric in TIMING_METRICS}
    return BenchReport(settings=settings, environment=environment, reference=reference, models=models)


def _divide(value: float | None, ref: float | None) -> float | None:
    return value / ref if value is not None and ref else None


COLUMNS = [  # metric, header, scale, format
    ("params_total", "params (M)", 1e-6, ".2f"),
    ("params_added", "added (M)", 1e-6, ".3f"),
    ("train_peak_mb", "train peak (MiB)", 1, ".0f"),
    ("inference_peak_mb", "infer peak (MiB)", 1, ".0f"),
    ("train_step_s", "train step (ms)", 1e3, ".1f"),
    ("train_tokens_per_s", "train tok/s", 1, ".0f"),
    ("prefill_s", "prefill (ms)", 1e3, ".1f"),
    ("decode_s_per_token", "decode (ms/tok)", 1e3, ".2f"),
    ("decode_tokens_per_s", "decode tok/s", 1, ".1f"),
]


def _cell(m: ModelBench, metric: str, scale: float, fmt: str, show_ratio: bool) -> str:
    value, stat = figure(m, metric), getattr(m, metric)
    if value is None:
        return "—"
    text = _stat_text(stat, scale, fmt) if isinstance(stat, Stat) else format(value * scale, fmt)
    ratio = m.ratios.get(metric)
    if show_ratio and ratio is not None:
        text += f" ({ratio:.2f}×)"
    return text


ADDED_COLUMNS = [  # metric, header, scale, format
    ("train_step_s", "train step (ms)", 1e3, ".2f"),
    ("prefill_s", "prefill (ms)", 1e3, ".2f"),
    ("decode_s_per_token", "decode (ms/tok)", 1e3, ".3f"),
]


def _stat_text(stat: Stat, scale: float, fmt: str) -> str:
    return f"{format(stat.median * scale, fmt)} [{format(stat.q1 * scale, fmt)}–{format(stat.q3 * scale, fmt)}]"


def added_markdown(report: BenchReport) -> list[str]:
    """Added cost per block against the base, where the base was benched too."""
    grown = [m for m in report.models if m.added_per_block is not None]
    if not grown:
        return []
    header = ["model", "base", "blocks"] + [c[1] for c in ADDED_COLUMNS]
    rows = []
    for m in grown:
        cells = [m.name + (" (ref)" if m.name == report.reference else ""), m.base, str(m.added_per_block.blocks)]
        for metric, _, scale, fmt in ADDED_COLUMNS:
            text = _stat_text(getattr(m.added_per_block, metric), scale, fmt)
            ratio = m.added_ratios.get(metric)
            if ratio is not None and m.name != report.reference:
                text += f" ({ratio:.2f}×)"
            cells.append(text)
        rows.append(cells)
    return ["", "Added cost per block, (model − base) ÷ blocks, run by run:", "", *markdown_table(header, rows)]


def bench_markdown(report: BenchReport) -> str:
    header = ["model", "weights", "layers"] + [c[1] for c in COLUMNS]
    rows = []
    for m in report.models:
        show = m.name != report.reference
        cells = [m.name + (" (ref)" if not show else ""), m.weights, str(m.layers)]
        rows.append(cells + [_cell(m, metric, scale, fmt, show) for metric, _, scale, fmt in COLUMNS])
    lines = markdown_table(header, rows) + added_markdown(report)
    s, env = report.settings, report.environment
    how = (f"models taking turns in one process, {s.repeats} rounds after {s.warmup} warm-up runs each"
           if env.get("interleaved") else f"one fresh process per model, {s.repeats} runs after {s.warmup} warm-up")
    notes = [
        f"Timings: median [interquartile range], {how}; (×) = ratio to {report.reference}, measured in the same "
        f"run. Batch {s.batch_size}; training step = forward + backward + AdamW on {s.train_seq_len} tokens; prefill "
        f"of {s.prefill_len} tokens; decode of {s.decode_tokens} tokens with the KV cache"
        f"{' (inference compiled: torch.compile fullgraph, static cache; training eager)' if s.compile else ''}. Device "
        f"{env.get('device_name')}, dtype {s.dtype}, {env.get('threads')} threads.",
        f"Memory: {env.get('memory_method')}.",
    ]
    return "\n".join(lines + [""] + notes) + "\n"


CHART_PANELS = [  # metric, title, scale
    ("params_added", "added parameters (M)", 1e-6),
    ("train_peak_mb", "training peak memory (MiB)", 1),
    ("inference_peak_mb", "inference peak memory (MiB)", 1),
    ("train_step_s", "training step (ms)", 1e3),
    ("prefill_s", "prefill (ms)", 1e3),
    ("decode_s_per_token", "decode (ms / token)", 1e3),
]


def bench_chart(report: BenchReport, path: str | Path) -> Path:
    """One PNG of bar charts, a panel per metric; timings carry min–max whiskers."""
    names = [m.name for m in report.models]
    fig, axes = subplots(2, 3, figsize=(15, 8))
    colors = ["tab:gray" if n == report.reference else "tab:blue" for n in names]
    for ax, (metric, title, scale) in zip(axes.flat, CHART_PANELS):
        values = [(figure(m, metric) or 0) * scale for m in report.models]
        errors = None
        if isinstance(getattr(report.models[0], metric), Stat):
            stats = [getattr(m, metric) for m in report.models]
            errors = [[(s.median - s.min) * scale for s in stats], [(s.max - s.median) * scale for s in stats]]
        ax.bar(range(len(names)), values, yerr=errors, color=colors, capsize=4)
        ax.set_xticks(range(len(names)), [Path(n).name or n for n in names], rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        for i, m in enumerate(report.models):
            ratio = m.ratios.get(metric)
            if ratio is not None and m.name != report.reference:
                ax.annotate(f"{ratio:.2f}×", (i, values[i]), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"midus bench ({report.environment.get('device_name')}, {report.settings.dtype}); "
                 f"grey = reference {Path(report.reference).name}")
    return save_figure(fig, path, dpi=110)
