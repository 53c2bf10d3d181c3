"""The demo's results: one JSON document (schema `midus.demo/1`, the pydantic models below are the
reference) and the paper-style Markdown table, every figure with its ratio to LLaMA Pro's.

    {"schema": "midus.demo/1", "command", "preset", "settings", "environment",
     "corpus": {part: {documents, modules, characters, tokens}},
     "base": {folder, cached, parameters, layers, train_tokens, final_loss, seconds},
     "runs": [Run],                    # one per (method, seed); the main seed first, then the noise probe
     "bench": {method: BenchFigures},  # the base too, as "base"
     "noise": Noise | null,
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
    status: str = Field(description="ok | failed | skipped")
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
    train_tokens_per_s: float
    train_step_ms: float
    prefill_ms: float
    decode_ms_per_token: float
    decode_ms_q1: float
    decode_ms_q3: float


class Noise(BaseModel):
    """Run-to-run noise: the probed methods grown and trained again with other seeds."""

    seeds: list[int]
    per_method: dict[str, dict[str, list[float]]] = Field(description="method -> metric -> value per seed")
    ppl_rolling_rel: float | None = Field(description="largest relative spread (max-min)/mean of rolling PPL over seeds")
    ppl_document_rel: float | None = None
    accuracy_abs: float | None = Field(None, description="largest spread (max-min) of the accuracy over seeds")


class DemoReport(BaseModel):
    schema_id: str = Field(SCHEMA, alias="schema")
    command: str
    preset: str
    settings: dict
    environment: dict
    corpus: dict = Field(default_factory=dict)
    base: dict = Field(default_factory=dict)
    runs: list[Run] = Field(default_factory=list)
    bench: dict[str, BenchFigures] = Field(default_factory=dict)
    noise: Noise | None = None
    stages: list[StageRecord] = Field(default_factory=list)
    reference: str = "llama-pro"
    total_seconds: float = 0.0

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)

    def main_runs(self) -> list[Run]:
        """The base row and one run per method at the main seed, in the settings' method order."""
        seed = self.settings.get("seed", 0)
        order = ["base", *self.settings.get("methods", [])]
        runs = {r.method: r for r in self.runs if r.seed == seed}
        return [runs[m] for m in order if m in runs]

    def failures(self) -> list[StageRecord]:
        return [s for s in self.stages if s.status == "failed"]


def measure_noise(runs: list[Run], methods: list[str]) -> Noise | None:
    """Spread over seeds of every probed method that has two or more finished runs."""
    per_method = {}
    for method in methods:
        done = [r for r in runs if r.method == method and r.ppl_rolling is not None]
        if len(done) >= 2:
            per_method[method] = {"seed": [float(r.seed) for r in done],
                                  "ppl_rolling": [r.ppl_rolling for r in done],
                                  "ppl_document": [r.ppl_document for r in done],
                                  "accuracy": [r.accuracy for r in done if r.accuracy is not None]}
    if not per_method:
        return None

    def spread(metric: str, relative: bool) -> float | None:
        spreads = [(max(v) - min(v)) / (statistics.mean(v) if relative else 1)
                   for m in per_method.values() if len(v := m[metric]) >= 2]
        return max(spreads) if spreads else None

    seeds = sorted({int(s) for m in per_method.values() for s in m["seed"]})
    return Noise(seeds=seeds, per_method=per_method, ppl_rolling_rel=spread("ppl_rolling", True),
                 ppl_document_rel=spread("ppl_document", True), accuracy_abs=spread("accuracy", False))


# --- Markdown ------------------------------------------------------------------------------------

def _ratio(value, reference) -> str:
    if value is None or reference in (None, 0) or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f" ({value / reference:.2f}×)"


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table(report: DemoReport) -> list[str]:
    rows = report.main_runs()
    ref = next((r for r in rows if r.method == report.reference), None)
    ref_bench = report.bench.get(report.reference)
    metric = next((r.accuracy_metric for r in rows if r.accuracy_metric), "acc")
    header = ["Method", "Layers", "Params added", "PPL rolling ↓", "PPL per doc ↓", f"MC {metric} ↑",
              "Train tok/s ↑", "Decode ms/tok ↓"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        b = report.bench.get(r.method)
        cells = [
            NAMES.get(r.method, r.method) + (" (ref)" if r.method == report.reference else ""),
            _num(r.layers, "d"),
            (f"{r.params_added:,}" + _ratio(r.params_added, ref and ref.params_added)) if r.params_added is not None else "—",
            _num(r.ppl_rolling, ".3f") + _ratio(r.ppl_rolling, ref and ref.ppl_rolling),
            _num(r.ppl_document, ".3f") + _ratio(r.ppl_document, ref and ref.ppl_document),
            (f"{100 * r.accuracy:.2f}" + (f" ± {100 * r.accuracy_stderr:.2f}" if r.accuracy_stderr else "")
             + _ratio(r.accuracy, ref and ref.accuracy)) if r.accuracy is not None else "—",
            (f"{b.train_tokens_per_s:,.0f}" + _ratio(b.train_tokens_per_s, ref_bench and ref_bench.train_tokens_per_s)) if b else "—",
            (f"{b.decode_ms_per_token:.2f}" + _ratio(b.decode_ms_per_token, ref_bench and ref_bench.decode_ms_per_token)) if b else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def separation(report: DemoReport) -> list[str]:
    """Which methods' rolling PPL differs from LLaMA Pro's by more than the measured noise."""
    noise = report.noise
    rows = {r.method: r for r in report.main_runs()}
    ref = rows.get(report.reference)
    if noise is None or noise.ppl_rolling_rel is None or ref is None or ref.ppl_rolling is None:
        return []
    beyond, within = [], []
    for method, r in rows.items():
        if method in ("base", report.reference) or r.ppl_rolling is None:
            continue
        gap = r.ppl_rolling / ref.ppl_rolling - 1
        (beyond if abs(gap) > noise.ppl_rolling_rel else within).append(f"{NAMES.get(method, method)} ({gap:+.1%})")
    lines = [f"Against LLaMA Pro, rolling PPL differs by more than the noise for: {', '.join(beyond) or 'none'}"]
    if within:
        lines[0] += f"; within the noise: {', '.join(within)}"
    return [lines[0] + "."]


def to_markdown(report: DemoReport) -> str:
    s = report.settings
    out = [f"# midus demo ({report.preset})", "", f"`{report.command}`", ""]
    out += table(report)
    out += ["", "Held-out text: standard-library modules that neither pre-training nor CPT saw. PPL rolling: one "
            f"stream, {s.get('eval_max_length')}-token windows, stride {s.get('eval_stride')}; PPL per doc: the paper's "
            "Wiki-PPL (mean of per-document perplexities). MC: the offline multiple-choice task through "
            "lm-evaluation-harness (true continuation of a held-out passage vs 3 cut from other passages; chance 25%), "
            "± standard error. Train tok/s and decode latency from `midus bench` in one process (medians of "
            f"{s.get('bench_repeats')} runs). (×) = ratio to LLaMA Pro."]
    out += ["", "## Setup", ""]
    base = report.base
    if base:
        out.append(f"- Base: a {base.get('layers')}-block Llama, {base.get('parameters', 0):,} parameters, trained from scratch "
                   f"on {base.get('train_tokens', 0):,} tokens of the pre-training part (final loss {_num(base.get('final_loss'), '.3f')}); "
                   f"{'cached' if base.get('cached') else 'built'} at `{base.get('folder')}`.")
    if report.corpus:
        parts = ", ".join(f"{part} {c['documents']:,} docs / {c['modules']} modules / {c['characters']:,} chars"
                          + (f" / {c['tokens']:,} tokens" if c.get("tokens") else "") for part, c in report.corpus.items())
        out.append(f"- Corpus (standard-library docstrings, split by module): {parts}.")
    out.append(f"- CPT: every method {s.get('cpt_tokens', 0):,} tokens of the CPT part ({s.get('seq_len')}-token sequences, "
               f"batch {s.get('batch_size')}), AdamW lr {s.get('cpt_lr')} with warmup and cosine decay, memory keys and "
               f"banks at lr {s.get('cpt_memory_lr') or s.get('cpt_lr')} without schedule or weight decay, trainable: "
               f"{s.get('cpt_trainable')}. Growth by recipes/tiny/*.yaml (4 → 6 blocks) on the demo base, float32.")
    identity = [f"{NAMES.get(r.method, r.method)}: max |Δlogits| {r.identity.max_abs_diff:.1e} ({'held' if r.identity.held else 'NOT held'})"
                for r in report.main_runs() if r.identity is not None and r.method in ("llama-pro", "midus")]
    if identity:
        out.append(f"- Identity at insertion, before CPT: {'; '.join(identity)}.")
    out.append(f"- Seeds: growth and CPT seed {s.get('seed')} for every method" + (
        f"; noise probe: {', '.join(NAMES.get(m, m) for m in (report.noise.per_method if report.noise else []))} "
        f"again with seeds {', '.join(str(x) for x in (report.noise.seeds if report.noise else []))}." if report.noise else "."))
    if report.noise:
        n = report.noise
        out.append(f"- Run-to-run noise (largest spread over seeds): rolling PPL {_pct(n.ppl_rolling_rel)}, per-doc PPL "
                   f"{_pct(n.ppl_document_rel)}, MC accuracy {_num(n.accuracy_abs and 100 * n.accuracy_abs, '.2f')} points.")
        out += [f"- {line}" for line in separation(report)]
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
