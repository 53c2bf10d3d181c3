"""`midus demo`: the paper's pipeline on the embedded default, stage by stage.

    corpus     standard-library docstrings, split by module (cached)
    base       BPE tokenizer + tiny Llama trained from scratch on the pre-training part (cached)
    per method grow (recipes/tiny) -> identity check -> CPT on the CPT part (equal tokens) -> held-out eval
    (each method with every seed; then the optional noise probe: some methods with extra seeds)
    bench      params, train tokens/s, prefill and decode latency, side by side
    report     results.json, results.md, cpt_loss.png, params_vs_ppl.png, latency.png

A stage that fails is recorded with its error and the method's later stages are skipped; the other
methods go on, and the report lists what finished. The report is rewritten after every method.
Every step is a call into the package's own API (upscale, train, evaluate, bench): no second copy.
"""

import math
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console

from ..errors import MidusError, UsageError
from .report import Cpt, DemoReport, Identity, Run, StageRecord, to_markdown
from .settings import IDENTITY_METHODS, REFERENCE, DemoSettings, demo_recipe

MARKER = ".midus-demo"  # an output folder holding this file is a demo's and may be replaced
IDENTITY_TOLERANCE = 1e-5
MC_MIN_WORDS = 16  # a multiple-choice passage needs 8 words of context and an 8-word continuation


class StageFailed(Exception):
    """Raised inside a stage to skip the rest of a method after its failure was recorded."""


def prepare_out_dir(out: Path) -> Path:
    """A fresh output folder: new, empty, or a previous demo's (replaced); anything else is refused."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UsageError(f"output {out} exists and is not a demo folder; choose a new --out")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `midus demo`; the next demo with this --out replaces the folder\n")
    return out


class Demo:
    def __init__(self, settings: DemoSettings, out: Path, *, cache_dir: Path | None = None,
                 recipes_dir: Path | None = None, command: str = "midus demo", console: Console | None = None):
        self.settings, self.out, self.cache_dir, self.recipes_dir = settings, Path(out), cache_dir, recipes_dir
        self.console = console or Console(stderr=True, highlight=False)
        self.work = self.out / "work"
        self.report = DemoReport(command=command, preset=settings.preset, settings=asdict(settings),
                                 environment=environment(), reference=REFERENCE)
        self.started = time.time()
        self.corpus = self.base = self.base_model = self.tasks = self.manager = None
        self.final_models: dict[str, Path] = {}
        self.planned = 3 + 4 * len(settings.jobs()) + 1
        self.count = 0

    # --- stages ----------------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str, method: str | None = None, seed: int | None = None):
        """Time a stage, print its progress, record it; a failure is recorded and raised as StageFailed."""
        self.count += 1
        label = " ".join(str(x) for x in (name, method, None if seed is None else f"seed {seed}") if x)
        self.console.rule(f"[bold][{self.count}/{self.planned}] {label}", align="left")
        record = StageRecord(stage=name, method=method, seed=seed, status="ok")
        begin = time.time()
        try:
            yield record
        except Exception as error:  # noqa: BLE001 - any failure of a stage is reported, the demo goes on
            record.status, record.error = "failed", one_line(error)
            with (self.out / "errors.log").open("a") as log:
                log.write(f"--- {label}\n{traceback.format_exc()}\n")
            self.console.print(f"[red]✗ {label} failed: {record.error}")
            raise StageFailed(label) from error
        except BaseException:  # Ctrl-C: the report is still written, with this stage marked
            record.status = "interrupted"
            raise
        finally:
            record.seconds = time.time() - begin
            self.report.stages.append(record)
            if record.status == "ok":
                self.console.print(f"[green]✓ {label}[/] in {record.seconds:.1f} s")

    def run(self) -> DemoReport:
        try:
            self.prepare()
            for method, seed, probe in self.settings.jobs():
                self.run_method(method, seed, probe)
                self.write(plots=False)
            self.bench()
        except StageFailed:
            pass  # recorded; the report says which stage and why
        finally:
            self.report.total_seconds = time.time() - self.started
            self.write(plots=True)
        return self.report

    def prepare(self) -> None:
        from ..data.corpus import load_corpus
        from .base import base_folder, build_base

        s = self.settings
        with self.stage("corpus"):
            self.corpus = load_corpus(s.corpus, self.cache_dir)
            self.report.corpus = self.corpus.stats()
            self.console.print(f"corpus at {self.corpus.folder}: " + ", ".join(
                f"{p} {c['documents']} docs, {c['characters']:,} chars" for p, c in self.report.corpus.items()))
        with self.stage("base"):
            folder = base_folder(self.corpus, s.base, self.cache_dir)
            cached = (folder / "run" / "model").is_dir()
            if cached:
                self.console.print(f"cached base: {folder}")
            begin = time.time()
            self.base = build_base(self.corpus, s.base, self.cache_dir)
            self.report.base = self.describe_base(self.base, cached, time.time() - begin)
        with self.stage("held-out tasks"):
            self.prepare_evaluation()

    def describe_base(self, folder: Path, cached: bool, seconds: float) -> dict:
        from ..load import load_model
        from ..train.rundir import RunFolder

        self.base_model = load_model(str(folder))
        tokens = self.corpus.token_counts(self.base_model.tokenizer)
        for part, count in tokens.items():
            self.report.corpus[part]["tokens"] = count
        records = [r for r in RunFolder(folder.parent).records() if r.get("kind") == "train"]
        config, s = self.base_model.model.config, self.settings.base
        tokens_per_step = s.seq_len * s.batch_size
        return {"folder": str(folder), "cached": cached, "seconds": seconds, "layers": config.num_hidden_layers,
                "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
                "parameters": sum(p.numel() for p in self.base_model.model.parameters()),
                "train_tokens": math.ceil(s.tokens / tokens_per_step) * tokens_per_step,
                "final_loss": records[-1]["loss"] if records else None}

    def prepare_evaluation(self) -> None:
        from lm_eval.tasks import TaskManager

        from ..evaluate import EvalSettings, write_heldout_tasks

        s = self.settings
        documents = self.corpus.texts("heldout")
        self.ppl_documents = evenly(documents, s.eval_documents)
        passages = [p for doc in documents for p in doc.split("\n\n") if len(p.split()) >= MC_MIN_WORDS]
        self.tasks = write_heldout_tasks(evenly(passages, s.mc_items), self.work / "tasks", seed=0)
        # our offline tasks only: indexing lm-eval's ~15k task files as well takes 10-25 s on this CPU
        self.manager = TaskManager(include_path=str(self.tasks), include_defaults=False)
        self.eval_settings = EvalSettings(
            tasks=["midus_heldout_mc"], include_paths=[str(self.tasks)], batch_size=s.eval_batch_size,
            ppl_kinds=["rolling", "document"], ppl_max_length=s.eval_max_length, ppl_stride=s.eval_stride, seed=s.seeds[0])
        base = self.evaluate_folder(self.base, Run(method="base", seed=s.seeds[0], params_added=0))
        self.report.runs.append(base)
        self.final_models["base"] = self.base

    # --- one method ------------------------------------------------------------------------------

    def run_method(self, method: str, seed: int, probe: bool = False) -> None:
        from ..upscale import upscale_to_folder

        run = Run(method=method, seed=seed)
        self.report.runs.append(run)
        folder = self.work / f"{method}-seed{seed}"
        try:
            with self.stage("grow", method, seed):
                recipe = demo_recipe(method, self.base, self.settings, seed, self.recipes_dir)
                grown = upscale_to_folder(recipe, folder / "grown")
            with self.stage("identity", method, seed):
                run.identity = self.identity(grown)
                if method in IDENTITY_METHODS and not run.identity.held:
                    self.console.print(f"[yellow]! identity at insertion does not hold for {method}: "
                                       f"max |Δlogits| {run.identity.max_abs_diff:.2e}")
            with self.stage("cpt", method, seed):
                model, run.cpt = self.continued_pretraining(grown, folder / "cpt", seed)
            with self.stage("eval", method, seed):
                self.evaluate_folder(model, run)
            if not probe and seed == self.settings.seeds[0]:
                self.final_models[method] = model  # benchmarked
        except StageFailed:
            pass

    def identity(self, grown: Path) -> Identity:
        """Max |grown logits - base logits| on held-out tokens, before any training."""
        from ..load import load_model

        tokenizer = self.base_model.tokenizer
        text = "\n\n".join(self.corpus.texts("heldout")[:16])
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : self.settings.seq_len]
        model = load_model(str(grown)).model
        with torch.no_grad():
            diff = (model(input_ids=ids).logits - self.base_model.model(input_ids=ids).logits).abs().max().item()
        return Identity(max_abs_diff=diff, tolerance=IDENTITY_TOLERANCE,
                        held=math.isfinite(diff) and diff <= IDENTITY_TOLERANCE)

    def continued_pretraining(self, grown: Path, run_dir: Path, seed: int) -> tuple[Path, Cpt]:
        from ..train import TrainConfig, train
        from ..train.rundir import RunFolder

        s = self.settings
        tokens_per_step = s.seq_len * s.batch_size
        steps = math.ceil(s.cpt_tokens / tokens_per_step)
        config = TrainConfig.parse({
            "model": str(grown), "output_dir": str(run_dir),
            "data": {"files": [str(self.corpus.file("cpt"))], "eval_files": [str(self.corpus.file("heldout"))],
                     "eval_sequences": s.cpt_eval_sequences},
            "seq_len": s.seq_len, "max_tokens": s.cpt_tokens, "batch_size": s.batch_size,
            "micro_batch_size": s.batch_size, "lr": s.cpt_lr, "memory_lr": s.cpt_memory_lr, "warmup": 0.05,
            "trainable": s.cpt_trainable, "seed": seed, "log_interval": max(1, steps // 40),
            "eval_interval": max(1, steps // s.cpt_evals), "save_interval": 0,
        }, source="demo CPT")
        model = train(config, overwrite=True)
        records = RunFolder(run_dir).records()
        train_records = [r for r in records if r.get("kind") == "train"]
        evals = [(r["step"] * tokens_per_step, r["eval_loss"]) for r in records if r.get("kind") == "eval"]
        summary = next((r for r in records if r.get("kind") == "summary"), {})
        return model, Cpt(tokens=steps * tokens_per_step, steps=steps, seconds=summary.get("train_runtime"),
                          final_loss=train_records[-1]["loss"] if train_records else None,
                          eval_loss=evals[-1][1] if evals else None,
                          curve=[(r["tokens"], r["loss"]) for r in train_records], eval_curve=evals)

    def evaluate_folder(self, folder: Path, run: Run) -> Run:
        """Held-out perplexities (both kinds) and the multiple-choice task, into `run`."""
        from ..evaluate import evaluate_model
        from ..load import load_model

        loaded = load_model(str(folder))
        result = evaluate_model(loaded.model, loaded.tokenizer, self.eval_settings, name=run.method,
                                documents=self.ppl_documents, manager=self.manager)
        run.layers = loaded.model.config.num_hidden_layers
        run.params_total = result.parameters
        if loaded.added_parameters is not None:
            run.params_added = loaded.added_parameters
        run.ppl_rolling = finite(result.perplexity["rolling"].value)
        run.ppl_document = finite(result.perplexity["document"].value)
        task = result.tasks[0]
        run.accuracy, run.accuracy_metric, run.accuracy_stderr = task.value, task.headline, task.stderr
        run.acc = task.metrics["acc"].value if "acc" in task.metrics else None
        run.acc_norm = task.metrics["acc_norm"].value if "acc_norm" in task.metrics else None
        run.mc_items = task.samples
        return run

    # --- bench and report ------------------------------------------------------------------------

    def bench(self) -> None:
        from ..bench import BenchSettings, bench
        from .report import BenchFigures

        s = self.settings
        models = dict(self.final_models)
        if not models:
            return
        with self.stage("bench"):
            reference = models.get(REFERENCE) or next(iter(models.values()))
            settings = BenchSettings(train_seq_len=s.seq_len, prefill_len=s.bench_prefill, decode_tokens=s.bench_decode,
                                     repeats=max(1, s.bench_repeats // s.bench_rounds), warmup=3,
                                     threads=s.bench_threads, seed=s.seeds[0])
            # rounds over all models, so a burst of load on a shared CPU hits every model, not one
            rounds = [bench([str(p) for p in models.values()], settings, reference=str(reference), isolate=False)
                      for _ in range(s.bench_rounds)]
            for method, path in models.items():
                measured = [next(m for m in result.models if m.name == str(path)) for result in rounds]
                decode = sorted(1e3 * m.decode_s_per_token.median for m in measured)
                self.report.bench[method] = BenchFigures(
                    train_tokens_per_s=statistics.median(m.train_tokens_per_s for m in measured),
                    train_step_ms=statistics.median(1e3 * m.train_step_s.median for m in measured),
                    prefill_ms=statistics.median(1e3 * m.prefill_s.median for m in measured),
                    decode_ms_per_token=statistics.median(decode), decode_ms_q1=decode[0], decode_ms_q3=decode[-1])
            shapes = {method: (m.layers, m.params_total) for method, path in models.items()
                      for m in rounds[0].models if m.name == str(path)}
            self.report.timing_noise = timing_noise(self.report.bench, shapes)
            (self.out / "bench.md").write_text("\n".join(result.to_markdown() for result in rounds))

    def write(self, plots: bool) -> None:
        from .plots import write_plots

        self.report.summarise()
        (self.out / "results.json").write_text(self.report.to_json() + "\n")
        (self.out / "results.md").write_text(to_markdown(self.report))
        if plots:
            try:
                write_plots(self.report, self.out)
            except Exception as error:  # noqa: BLE001 - a plot must not lose the tables
                self.console.print(f"[red]✗ plots failed: {one_line(error)}")


# --- helpers ---------------------------------------------------------------------------------------

def one_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if isinstance(error, MidusError) else f"{type(error).__name__}: {text}"


def evenly(items: list, count: int | None) -> list:
    """`count` items spread evenly over the list (all of them if count is None or not smaller), so a
    subset of the held-out documents, which come in module order, covers every held-out module."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def timing_noise(figures: dict, shapes: dict) -> dict | None:
    """Models of one architecture (same depth and parameter count, other weights) time the same work:
    the largest relative spread (max - min) / median within such a group is the timing noise."""
    groups = {}
    for method, shape in shapes.items():
        groups.setdefault(shape, []).append(method)
    groups = [g for g in groups.values() if len(g) >= 2]
    if not groups:
        return None

    def spread(metric: str) -> float:
        values = [[getattr(figures[m], metric) for m in group] for group in groups]
        return max((max(v) - min(v)) / statistics.median(v) for v in values)

    return {"groups": groups, "train_tokens_per_s": spread("train_tokens_per_s"),
            "decode_ms_per_token": spread("decode_ms_per_token")}


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def environment() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device_name": f"cpu ({platform.machine()}, {os.cpu_count()} cores)", "threads": torch.get_num_threads(),
            "argv": " ".join(sys.argv)}


def run_demo(settings: DemoSettings, out: str | Path, *, cache_dir: str | Path | None = None,
             recipes_dir: str | Path | None = None, command: str = "midus demo") -> DemoReport:
    """Run the whole demo into `out` (replacing a previous demo's folder); returns the report."""
    out = prepare_out_dir(Path(out))
    demo = Demo(settings, out, cache_dir=Path(cache_dir) if cache_dir else None,
                recipes_dir=Path(recipes_dir) if recipes_dir else None, command=command)
    return demo.run()
