"""The quality table: one row per model, as JSON (schema below) and Markdown.

JSON schema `midus.eval/1` (the pydantic models below are the reference):
    {"schema": "midus.eval/1",
     "settings": EvalSettings,                     # what was run, with which limits, batch, device, dtype
     "models": [{"name": str,                      # as given on the command line
                 "weights": "loaded",              # eval never uses random weights
                 "parameters": int,                # total parameters
                 "perplexity": {"rolling"|"document": Perplexity},
                 "tasks": [TaskResult],            # one per requested task/group, in order
                 "average": float | null}]}        # mean of the headline accuracies (fraction metrics only)
Accuracies are fractions in JSON and percentages in Markdown; each task names its headline metric
(`auto`: acc_norm where the task reports it, else acc, else its first metric).
"""

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..checkpoint import DtypeName
from ..data.sources import TextSource
from ..report import Report, markdown_table
from ..schema import YamlModel
from .harness import HEADLINES, TaskResult
from .perplexity import KINDS, Perplexity

SCHEMA = "midus.eval/1"
FRACTIONS = ("acc", "acc_norm", "exact_match", "f1", "em", "mcc", "mc1", "mc2")  # shown as percentages


def is_fraction(metric: str) -> bool:
    return metric.split("[")[0] in FRACTIONS


class EvalSettings(YamlModel):
    """What `midus eval` runs; every field is a `--set` key (and most have a flag of their own)."""

    kind: ClassVar[str] = "eval settings"

    tasks: list[str] = Field(default_factory=list, description="lm-eval task/group names or presets (paper, "
                                                               "paper-math); comma-separated names are split")
    include_paths: list[str] = Field(default_factory=list, description="folders of extra lm-eval task YAMLs "
                                                                       "(e.g. an offline held-out task)")
    limit: int | float | None = Field(None, gt=0, description="lm-eval: documents per task (a number < 1: a fraction); "
                                                              "default: all")
    num_fewshot: int | None = Field(None, ge=0, description="lm-eval: few-shot examples (default: each task's own, "
                                                            "0 for most)")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    headline: Literal[HEADLINES] = Field("auto", description="headline metric: auto (acc_norm where reported, "
                                                             "else acc), acc or acc_norm")
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    dtype: DtypeName = Field("float32", description="dtype every model is loaded in")
    ppl_data: TextSource | None = Field(None, description="perplexity text (default: no perplexity)")
    ppl_kinds: list[Literal[KINDS]] = Field(["rolling", "document"], min_length=1,
                                            description="rolling and/or document perplexity")
    ppl_max_length: int | None = Field(None, ge=2, description="perplexity window / truncation in tokens "
                                                               "(default: min(2048, the model's positions))")
    ppl_stride: int | None = Field(None, ge=1, description="rolling perplexity: tokens the window advances by "
                                                           "(default: half the window)")
    seed: int = Field(0, description="lm-eval's random seeds (few-shot sampling)")

    @field_validator("limit")
    @classmethod
    def _whole_limit(cls, value):
        return int(value) if value is not None and value >= 1 else value  # 8.0 documents is 8, 0.5 a fraction

    @model_validator(mode="after")
    def _stride_within_window(self):
        if self.ppl_stride and self.ppl_max_length and self.ppl_stride > self.ppl_max_length:
            raise ValueError(f"ppl_stride: {self.ppl_stride} is beyond the window length ppl_max_length="
                             f"{self.ppl_max_length}; it must be between 1 and the window length")
        return self


class ModelEval(BaseModel):
    name: str
    weights: str = "loaded"
    parameters: int
    perplexity: dict[str, Perplexity] = Field(default_factory=dict)
    tasks: list[TaskResult] = Field(default_factory=list)
    average: float | None = None
    items: dict[str, list[float]] = Field(default_factory=dict, exclude=True,
                                          description="per task, every item's headline metric (with `items=True`)")


class EvalReport(Report, schema=SCHEMA):
    settings: EvalSettings
    models: list[ModelEval]

    def to_markdown(self) -> str:
        return eval_markdown(self)


def _fmt(metric: str, value: float, stderr: float | None = None) -> str:
    if not is_fraction(metric):
        return f"{value:.4g}" + (f" ± {stderr:.2g}" if stderr is not None else "")
    return f"{100 * value:.2f}" + (f" ± {100 * stderr:.2f}" if stderr is not None else "")


def eval_markdown(report: EvalReport) -> str:
    kinds = [k for k in ("rolling", "document") if any(k in m.perplexity for m in report.models)]
    tasks = list(dict.fromkeys(t.task for m in report.models for t in m.tasks))
    headlines = {t.task: t.headline for m in report.models for t in m.tasks}
    header = ["model", "params"] + [{"rolling": "PPL (rolling) ↓", "document": "Wiki-PPL (per doc) ↓"}[k] for k in kinds]
    header += [f"{t} ({headlines[t]})" for t in tasks] + (["avg"] if tasks else [])
    rows = []
    for m in report.models:
        by_task = {t.task: t for t in m.tasks}
        cells = [m.name, f"{m.parameters:,}"] + [f"{m.perplexity[k].value:.3f}" if k in m.perplexity else "" for k in kinds]
        cells += [_fmt(by_task[t].headline, by_task[t].value, by_task[t].stderr) if t in by_task else "" for t in tasks]
        cells += [f"{100 * m.average:.2f}" if m.average is not None else ""] if tasks else []
        rows.append(cells)
    lines = markdown_table(header, rows)
    s = report.settings
    notes = [f"Device {s.device}, dtype {s.dtype}, batch size {s.batch_size}."]
    if tasks:
        notes.append(f"Accuracies in %, ± standard error; headline metric in brackets (rule: {s.headline}); "
                     f"lm-eval limit {s.limit if s.limit is not None else 'none'}, few-shot "
                     f"{s.num_fewshot if s.num_fewshot is not None else 'task default'}.")
    if kinds:
        m = next(m for m in report.models if m.perplexity)
        p = next(iter(m.perplexity.values()))
        stride = f", stride {m.perplexity['rolling'].stride}" if "rolling" in m.perplexity else ""
        notes.append(f"Perplexity on {s.ppl_data.describe() if s.ppl_data else '?'}: {p.documents} documents, "
                     f"window/truncation {p.max_length} tokens{stride}.")
    detail = _metric_table(report) if tasks else []
    return "\n".join(lines + [""] + notes + ([""] + detail if detail else [])) + "\n"


def _metric_table(report: EvalReport) -> list[str]:
    """Every metric of every task: acc and acc_norm side by side, with stderr."""
    rows = [[m.name, t.task, "" if t.samples is None else str(t.samples), name + (" (headline)" if name == t.headline else ""),
             _fmt(name, metric.value), "" if metric.stderr is None else _fmt(name, metric.stderr)]
            for m in report.models for t in m.tasks for name, metric in t.metrics.items()]
    return markdown_table(["model", "task", "samples", "metric", "value", "stderr"], rows)
