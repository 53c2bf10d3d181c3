"""The cost table: models side by side, with ratios to a reference measured in the same run.

JSON schema `midus.bench/1` (the pydantic models here and in measure.py are the reference):
    {"schema": "midus.bench/1",
     "settings": BenchSettings,        # device, dtype, batch, lengths, warm-up, repeats, seed
     "environment": {...},             # torch / transformers versions, device name, threads, memory method
     "reference": str,                 # the model the ratios divide by (one of the models)
     "models": [{
        "name", "source" (folder|hub|recipe), "weights" (loaded|random), "model_type", "layers",
        "params_total", "params_added",
        "train_peak_mb", "inference_peak_mb",                      # MiB, weights included
        "train_step_s", "prefill_s", "decode_s_per_token":         # seconds: {median, q1, q3, min, max, samples}
        "train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",   # from the medians
        "ratios": {metric: value / reference value | null}}]}      # every metric of RATIO_METRICS
Ratios of timings use medians; a ratio is null when either figure is missing or the reference's is 0.
"""

from pathlib import Path

from pydantic import BaseModel, Field

from .measure import BenchSettings, Measurement, Stat

SCHEMA = "midus.bench/1"
RATIO_METRICS = (
    "params_total", "params_added", "train_peak_mb", "inference_peak_mb", "train_step_s", "prefill_s",
    "decode_s_per_token", "train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",
)


class ModelBench(Measurement):
    ratios: dict[str, float | None] = Field(description="value / reference's value, per RATIO_METRICS")


class BenchReport(BaseModel):
    schema_id: str = Field(SCHEMA, alias="schema")
    settings: BenchSettings
    environment: dict[str, str | int | None]
    reference: str
    models: list[ModelBench]

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)

    def to_markdown(self) -> str:
        return bench_markdown(self)

    def plot(self, path: str | Path) -> Path:
        return bench_chart(self, path)


def figure(m: Measurement, metric: str) -> float | None:
    """A metric's headline number: the median for timings, the value otherwise."""
    value = getattr(m, metric)
    return value.median if isinstance(value, Stat) else value


def ratios(m: Measurement, reference: Measurement) -> dict[str, float | None]:
    out = {}
    for metric in RATIO_METRICS:
        value, ref = figure(m, metric), figure(reference, metric)
        out[metric] = value / ref if value is not None and ref else None
    return out


def build_report(measurements: list[Measurement], reference: str, settings: BenchSettings, environment: dict) -> BenchReport:
    ref = next(m for m in measurements if m.name == reference)
    models = [ModelBench(**m.model_dump(), ratios=ratios(m, ref)) for m in measurements]
    return BenchReport(settings=settings, environment=environment, reference=reference, models=models)


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
    value = figure(m, metric)
    if value is None:
        return "—"
    text = format(value * scale, fmt)
    stat = getattr(m, metric)
    if isinstance(stat, Stat):
        text += f" [{format(stat.q1 * scale, fmt)}–{format(stat.q3 * scale, fmt)}]"
    ratio = m.ratios.get(metric)
    if show_ratio and ratio is not None:
        text += f" ({ratio:.2f}×)"
    return text


def bench_markdown(report: BenchReport) -> str:
    header = ["model", "weights", "layers"] + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in report.models:
        show = m.name != report.reference
        cells = [m.name + (" (ref)" if not show else ""), m.weights, str(m.layers)]
        cells += [_cell(m, metric, scale, fmt, show) for metric, _, scale, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    s, env = report.settings, report.environment
    notes = [
        f"Timings: median [interquartile range] of {s.repeats} runs after {s.warmup} warm-up; (×) = ratio to "
        f"{report.reference}, measured in the same run. Batch {s.batch_size}; training step = forward + backward + "
        f"AdamW on {s.train_seq_len} tokens; prefill of {s.prefill_len} tokens; decode of {s.decode_tokens} tokens "
        f"with the KV cache. Device {env.get('device_name')}, dtype {s.dtype}, {env.get('threads')} threads.",
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in report.models]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
