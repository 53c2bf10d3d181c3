"""The demo's results: one JSON document (schema `midus.demo/1`, the pydantic models below are the
reference) and the paper-style Markdown table, every figure with its ratio to LLaMA Pro's.

    {"schema": "midus.demo/1", "command", "preset", "settings", "environment",
     "corpus": {part: {documents, modules, characters, tokens}},
     "base": {folder, cached, parameters, layers, train_tokens, final_loss, seconds},
     "runs": [Run],                    # one per (method, seed), and the base's ("base", no growth, no CPT)
     "rows": [Row],                    # the table: per method, the mean over the settings' seeds
     "bench": {method: BenchFigures},  # the base too, as "base"; models of the first seed
     "noise": Noise | null,            # run-to-run noise, pooled over the methods run with 2+ seeds
     "timing_noise": {...} | null,     # bench spread among models of one architecture
     "stages": [StageRecord],          # every stage, in order, with its status, seconds and error
     "reference": "llama-pro", "total_seconds"}
"""

import math
import statistics

from pydantic import BaseModel, Field

SCHEMA = "midus.demo/1"
NAMES = {"base": "Base (no CPT)", "none": "CPT-Base", "solar": "SOLAR", "llama-pro": "LLaMA Pro", "lesa": "LESA",
         "pkm": "PKM", "midus": "MIDUS (HML)"}


class StageRecord(BaseModel):
    stage: str
    method: str | None = None
    seed: int | None = None
    status: str = Field(description="ok | failed | interrupted")
    seconds: float = 0.0
    error: str | None = None


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


class Run(BaseModel):
    """One method grown and trained with one seed (`base`: the base itself, no growth, no CPT)."""

    method: str
    seed: int
    layers: int | None = None
    params_total: int | None = None
    params_added: int | None = None
    identity: Identity | None = None
    cpt: Cpt | None = None
    ppl_rolling: float | None = None
    ppl_document: float | None = None
    accuracy: float | None = Field(None, description="multiple-choice accuracy (the headline metric), a fraction")
    accuracy_metric: str | None = None
    accuracy_stderr: float | None = None
    acc: float | None = None
    acc_norm: float | None = None
    mc_items: int | None = None


class BenchFigures(BaseModel):
    """Medians over the bench rounds of each round's median; decode's lowest and highest round too."""

    train_tokens_per_s: float
    train_step_ms: float
    prefill_ms: float
    decode_ms_per_token: float
    decode_ms_q1: float = Field(description="the lowest round's decode latency")
    decode_ms_q3: float = Field(description="the highest round's decode latency")


class Row(BaseModel):
    """One line of the table: a method's figures, the mean over the runs of the settings' seeds."""

    method: str
    seeds: list[int] = Field(description="seeds whose runs finished (the base: its single evaluation)")
    layers: int | None = None
    params_total: int | None = None
    params_added: int | None = None
    ppl_rolling: float | None = None
    ppl_document: float | None = None
    accuracy: float | None = None
    accuracy_metric: str | None = None
    accuracy_stderr: float | None = Field(None, description="lm-eval's standard error of one run's accuracy")
    ppl_rolling_spread: float | None = Field(None, description="(max - min) / 2 over the seeds")
    ppl_document_spread: float | None = None
    accuracy_spread: float | None = None


class Noise(BaseModel):
    """Run-to-run noise: the standard deviation of one run's figure over seeds (grown and trained again),
    pooled over every method with two or more finished seeds."""

    methods: list[str]
    seeds: list[int]
    ppl_rolling_sd: float = Field(description="relative SD of one run's rolling PPL (a fraction of its mean)")
    ppl_document_sd: float = Field(description="relative SD of one run's per-document PPL")
    accuracy_sd: float | None = Field(None, description="SD of one run's accuracy (absolute, a fraction)")


class DemoReport(BaseModel):
    schema_id: str = Field(SCHEMA, alias="schema")
    command: str
    preset: str
    settings: dict
    environment: dict
    corpus: dict = Field(default_factory=dict)
    base: dict = Field(default_factory=dict)
    runs: list[Run] = Field(default_factory=list)
    rows: list[Row] = Field(default_factory=list)
    bench: dict[str, BenchFigures] = Field(default_factory=dict)
    noise: Noise | None = None
    timing_noise: dict | None = Field(None, description="{groups: [[method, ...]] of one architecture, train_tokens_per_s, "
                                                        "decode_ms_per_token: largest (max - min) / median in a group}")
    stages: list[StageRecord] = Field(default_factory=list)
    reference: str = "llama-pro"
    total_seconds: float = 0.0

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)

    def row(self, method: str) -> Row | None:
        return next((r for r in self.rows if r.method == method), None)

    def failures(self) -> list[StageRecord]:
        return [s for s in self.stages if s.status == "failed"]

    def summarise(self) -> None:
        """Fill `rows` and `noise` from `runs`."""
        methods = ["base", *self.settings.get("methods", [])]
        seeds = self.settings.get("seeds", [0])
        self.rows = [row for m in methods if (row := table_row(m, [r for r in self.runs if r.method == m
                                                                    and (m == "base" or r.seed in seeds)]))]
        self.noise = measure_noise(self.runs)


def _finished(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.ppl_rolling is not None and r.ppl_document is not None]


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _spread(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return (max(values) - min(values)) / 2 if len(values) >= 2 else None


def table_row(method: str, runs: list[Run]) -> Row | None:
    """The mean over a method's finished runs (None if none finished)."""
    done = _finished(runs)
    if not done:
        return None
    first = done[0]
    return Row(method=method, seeds=[r.seed for r in done], layers=first.layers, params_total=first.params_total,
               params_added=first.params_added, ppl_rolling=_mean([r.ppl_rolling for r in done]),
               ppl_document=_mean([r.ppl_document for r in done]), accuracy=_mean([r.accuracy for r in done]),
               accuracy_metric=first.accuracy_metric, accuracy_stderr=first.accuracy_stderr,
               ppl_rolling_spread=_spread([r.ppl_rolling for r in done]),
               ppl_document_spread=_spread([r.ppl_document for r in done]),
               accuracy_spread=_spread([r.accuracy for r in done]))


def measure_noise(runs: list[Run]) -> Noise | None:
    """Pooled SD over seeds: sqrt(mean over methods of each method's sample variance), the PPLs
    relative to each method's mean; None unless some method finished with two or more seeds."""
    groups = {}
    for run in _finished([r for r in runs if r.method != "base"]):
        groups.setdefault(run.method, []).append(run)
    groups = {m: g for m, g in groups.items() if len(g) >= 2}
    if not groups:
        return None

    def pooled(metric: str, relative: bool) -> float | None:
        variances = []
        for group in groups.values():
            values = [getattr(r, metric) for r in group if getattr(r, metric) is not None]
            if len(values) >= 2:
                scale = statistics.fmean(values) if relative else 1.0
                variances.append(statistics.variance([v / scale for v in values]))
        return math.sqrt(statistics.fmean(variances)) if variances else None

    return Noise(methods=list(groups), seeds=sorted({r.seed for g in groups.values() for r in g}),
                 ppl_rolling_sd=pooled("ppl_rolling", True), ppl_document_sd=pooled("ppl_document", True),
                 accuracy_sd=pooled("accuracy", False))


# --- Markdown ------------------------------------------------------------------------------------

def _ratio(value, reference) -> str:
    if value is None or reference in (None, 0) or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f" ({value / reference:.2f}×)"


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pm(spread, fmt: str, scale: float = 1) -> str:
    return "" if spread is None else f" ± {format(spread * scale, fmt)}"


def table(report: DemoReport) -> list[str]:
    ref, ref_bench = report.row(report.reference), report.bench.get(report.reference)
    metric = next((r.accuracy_metric for r in report.rows if r.accuracy_metric), "acc")
    header = ["Method", "Layers", "Params added", "PPL rolling ↓", "PPL per doc ↓", f"MC {metric} % ↑",
              "Train tok/s ↑", "Decode ms/tok ↓"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in report.rows:
        b = report.bench.get(r.method)
        cells = [
            NAMES.get(r.method, r.method) + (" (ref)" if r.method == report.reference else ""),
            _num(r.layers, "d"),
            "—" if r.params_added is None else f"{r.params_added:,}" + _ratio(r.params_added, ref and ref.params_added),
            _num(r.ppl_rolling, ".2f") + _pm(r.ppl_rolling_spread, ".2f") + _ratio(r.ppl_rolling, ref and ref.ppl_rolling),
            _num(r.ppl_document, ".2f") + _pm(r.ppl_document_spread, ".2f") + _ratio(r.ppl_document, ref and ref.ppl_document),
            "—" if r.accuracy is None else f"{100 * r.accuracy:.2f}" + _pm(r.accuracy_spread, ".2f", 100)
            + _ratio(r.accuracy, ref and ref.accuracy),
            "—" if b is None else f"{b.train_tokens_per_s:,.0f}" + _ratio(b.train_tokens_per_s, ref_bench and ref_bench.train_tokens_per_s),
            "—" if b is None else f"{b.decode_ms_per_token:.2f}" + _ratio(b.decode_ms_per_token, ref_bench and ref_bench.decode_ms_per_token),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def separation(report: DemoReport) -> list[str]:
    """Each method's gap to LLaMA Pro in rolling PPL against the noise of that gap: with the pooled SD
    s of one run, a mean over n and n_ref seeds differs by noise alone with SD s*sqrt(1/n + 1/n_ref);
    a gap beyond twice that is called a separation."""
    noise, ref = report.noise, report.row(report.reference)
    if noise is None or ref is None or ref.ppl_rolling is None:
        return []
    beyond, within = [], []
    for r in report.rows:
        if r.method in ("base", report.reference) or r.ppl_rolling is None:
            continue
        gap = r.ppl_rolling / ref.ppl_rolling - 1
        threshold = 2 * noise.ppl_rolling_sd * math.sqrt(1 / len(r.seeds) + 1 / len(ref.seeds))
        (beyond if abs(gap) > threshold else within).append(f"{NAMES.get(r.method, r.method)} {gap:+.1%} (2σ {threshold:.1%})")
    return [f"Rolling PPL against LLaMA Pro, beyond twice the noise of the gap: {', '.join(beyond) or 'none'}; "
            f"within it: {', '.join(within) or 'none'}."]


def to_markdown(report: DemoReport) -> str:
    s = report.settings
    seeds = s.get("seeds", [])
    out = [f"# midus demo ({report.preset})", "", f"`{report.command}`", ""]
    out += table(report)
    out += ["", f"Mean over seeds {', '.join(map(str, seeds))} (± half the range over seeds) of every method grown "
            "and trained with each seed. Held-out text: standard-library modules that neither pre-training nor CPT "
            f"saw. PPL rolling: one stream, {s.get('eval_max_length')}-token windows, stride {s.get('eval_stride')}; "
            "PPL per doc: the paper's Wiki-PPL (mean of per-document perplexities). MC: the offline multiple-choice "
            "task through lm-evaluation-harness (the true 8-word continuation of a held-out passage against 3 cut "
            "from other passages; chance 25%). Train tok/s and decode latency: `midus bench` in one process "
            f"(medians of {s.get('bench_rounds')} rounds over all models of {s.get('bench_repeats', 0) // max(1, s.get('bench_rounds', 1))} "
            f"timed runs each, {s.get('bench_threads') or 'default'} thread(s), models of seed "
            f"{seeds[0] if seeds else '?'}). (×) = ratio to LLaMA Pro."]
    out += ["", "## Setup", ""]
    base = report.base
    if base:
        out.append(f"- Base: a {base.get('layers')}-block Llama (d {base.get('hidden_size')}, vocabulary "
                   f"{base.get('vocab_size')}), {base.get('parameters', 0):,} parameters, trained from scratch on "
                   f"{base.get('train_tokens', 0):,} tokens of the pre-training part (last training loss "
                   f"{_num(base.get('final_loss'), '.3f')}); {'cached' if base.get('cached') else 'built'} at `{base.get('folder')}`.")
    if report.corpus:
        parts = "; ".join(f"{part} {c['documents']:,} docs, {c['modules']} modules, {c['characters']:,} chars"
                          + (f", {c['tokens']:,} tokens" if c.get("tokens") else "") for part, c in report.corpus.items())
        out.append(f"- Corpus (standard-library docstrings, split by module): {parts}.")
    out.append(f"- CPT: every method {s.get('cpt_tokens', 0):,} tokens of the CPT part ({s.get('batch_size')} x "
               f"{s.get('seq_len')}-token sequences per step), AdamW lr {s.get('cpt_lr')}, warmup and cosine decay; memory "
               f"keys and banks at lr {s.get('cpt_memory_lr') or s.get('cpt_lr')}, constant, no weight decay; trainable: "
               f"{s.get('cpt_trainable')}. Growth by recipes/tiny/*.yaml on the demo base, float32.")
    identity = [f"{NAMES.get(r.method, r.method)} seed {r.seed}: max |Δlogits| {r.identity.max_abs_diff:.1e} "
                f"({'held' if r.identity.held else 'NOT held'})"
                for r in report.runs if r.identity is not None and r.method in ("llama-pro", "midus")]
    if identity:
        out.append(f"- Identity at insertion, before CPT: {'; '.join(identity)}.")
    if report.noise:
        n = report.noise
        out.append(f"- Run-to-run noise (SD of one run over seeds {', '.join(map(str, n.seeds))}, pooled over "
                   f"{', '.join(NAMES.get(m, m) for m in n.methods)}): rolling PPL {_pct(n.ppl_rolling_sd)}, per-doc PPL "
                   f"{_pct(n.ppl_document_sd)}, MC accuracy {_num(n.accuracy_sd and 100 * n.accuracy_sd, '.2f')} points.")
        out += [f"- {line}" for line in separation(report)]
    else:
        out.append("- Run-to-run noise: not measured (one seed per method and no noise probe).")
    if t := report.timing_noise:
        groups = "; ".join(" = ".join(NAMES.get(m, m) for m in g) for g in t["groups"])
        out.append(f"- Timing noise: models of one architecture ({groups}) differ by up to {_pct(t['train_tokens_per_s'])} "
                   f"in train tok/s and {_pct(t['decode_ms_per_token'])} in decode latency; smaller gaps are not differences.")
    env = report.environment
    out.append(f"- Machine: {env.get('device_name')}, {env.get('threads')} threads; torch {env.get('torch')}, "
               f"transformers {env.get('transformers')}, Python {env.get('python')}. Total {report.total_seconds / 60:.1f} min.")
    out += ["", "## Stages", "", "| stage | method | seed | status | seconds |", "|---|---|---|---|---:|"]
    for st in report.stages:
        status = st.status if st.error is None else f"{st.status}: {st.error}"
        out.append(f"| {st.stage} | {st.method or ''} | {'' if st.seed is None else st.seed} | {status} | {st.seconds:.1f} |")
    if failures := report.failures():
        out += ["", "**Failed stages:** " + "; ".join(f"{f.stage} {f.method or ''}: {f.error}" for f in failures)]
    return "\n".join(out) + "\n"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"
