"""`midus compare`: an experiment's every stage, for every method and seed, resumable by stage.

    corpus, base   the embedded corpus and base (cached); or the experiment's hub id / folder / GGUF file
                   (converted once, cached) and its Wikipedia text
    base eval      the base itself, before growth and CPT
    per job        grow (the method's recipe) -> identity check -> [evaluation before CPT] -> CPT (the
                   shared config, equal tokens) -> evaluation (perplexity, lm-eval tasks, every item kept
                   for the paired tests)
    bench          params, train tokens/s, prefill and decode latency, models interleaved in rounds
    analyze        `midus analyze` of the models named in `analyze`, after CPT
    report         results.json, results.md, cpt_loss.png, params_vs_ppl.png, before_after_ppl.png, accuracy.png,
                   latency.png

The folder records each finished stage in `stages/<stage>.json`; a rerun of the same experiment
skips those, and a CPT run killed midway resumes from its last checkpoint (`midus train`). A stage
that fails is recorded with its error and the method's later stages are skipped; the other methods
go on. Every step is a call into the package's own API (upscale, train, evaluate, bench).
"""

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from ..checkpoint import atomic_write_text
from ..bench.measure import torch_threads
from ..errors import MidusError, UsageError
from ..report import write_report_files
from ..train.lock import LOCK_FILE, clear_but_lock, folder_lock
from ..train.preemption import Preempted, PreemptionFlag, catch_preemption
from .experiment import EMBEDDED_MC_TASK, Experiment, GgufBase
from .report import BenchFigures, CompareReport, Cpt, Identity, Run, Scores, StageRecord, TaskScore

EXPERIMENT_FILE = "experiment.yaml"  # the validated experiment this folder holds
STAGES_DIR = "stages"
IDENTITY_TOLERANCE = 1e-5
MC_MIN_WORDS = 16  # a multiple-choice passage needs 8 words of context and an 8-word continuation


class StageFailed(Exception):
    """Raised inside a stage to skip the rest of a method after its failure was recorded."""


@dataclass
class StageState:
    saved: dict | None  # the result an earlier run of this comparison stored: the stage skips its work
    result: dict | None = None  # what this run stores when the stage finishes

    @property
    def value(self) -> dict | None:
        return self.result if self.saved is None else self.saved


def check_comparison_folder(out: Path, experiment: Experiment, overwrite: bool) -> bool:
    """A new or empty folder, or one holding this same experiment (resumed); another experiment is
    refused unless `overwrite` (then True: it is to be cleared); a folder that is not a comparison's
    is always refused."""
    if not out.exists() or (out.is_dir() and not any(p.name != LOCK_FILE for p in out.iterdir())):
        return False
    held = out / EXPERIMENT_FILE
    if not out.is_dir() or not held.is_file():
        raise UsageError(f"output {out} exists and is not a comparison folder; choose a new --out")
    if held.read_text() == experiment.to_yaml():
        return False
    if not overwrite:
        raise UsageError(f"output {out} holds another experiment ({held}); pass --overwrite to replace it, "
                         "or choose another --out")
    return True


class Comparison:
    def __init__(self, experiment: Experiment, out: Path, *, cache_dir: Path | None = None, command: str = "midus compare",
                 console: Console | None = None, preemption: PreemptionFlag | None = None):
        self.experiment, self.out, self.cache_dir = experiment, Path(out), cache_dir
        self.preemption = preemption or PreemptionFlag()
        self.console = console or Console(stderr=True, highlight=False)
        self.work = self.out / "work"
        self.report = CompareReport(command=command, experiment=experiment.model_dump(mode="json"),
                                    environment=environment(experiment.device), reference=experiment.reference)
        self.started = time.time()
        self.corpus = self.base = self.base_model = self.base_scores = self.base_shape = None
        self.final_models: dict[str, Path] = {}
        self.planned = experiment.stage_count
        self.count = 0

    # --- stages ----------------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str, method: str | None = None, seed: int | None = None, key: str | None = None):
        """Time a stage, print its progress, record it. With `key`, a finished stage's result is kept
        in stages/<key>.json: the yielded state's `saved` holds it on a rerun (the stage then skips its
        work), and the stage sets `result` to store it. A failure is recorded and raised as StageFailed."""
        self.count += 1
        label = " ".join(str(x) for x in (name, method, None if seed is None else f"seed {seed}") if x)
        if self.preemption.received:  # a signal during the last stage: stop between stages, all kept
            raise Preempted(f"{self.preemption.name} received: stopped before {label}; every finished stage is kept; "
                            "run the same command again to resume")
        record = StageRecord(stage=name, method=method, seed=seed, status="ok")
        path = self.out / STAGES_DIR / f"{key}.json" if key else None
        saved = json.loads(path.read_text()) if path is not None and path.is_file() else None
        state = StageState(saved=None if saved is None else saved["result"])
        if saved is not None:
            record.resumed, record.seconds = True, saved["seconds"]
        self.console.rule(f"[bold][{self.count}/{self.planned}] {label}" + (" (done before)" if saved else ""),
                          align="left")
        begin = time.time()
        try:
            yield state
        except Preempted:  # CPT checkpointed at the step it reached: the whole comparison stops, resumably
            record.status = "interrupted"
            raise
        except Exception as error:  # noqa: BLE001 - any failure of a stage is reported, the comparison goes on
            record.status, record.error = "failed", one_line(error)
            with (self.out / "errors.log").open("a") as log:
                log.write(f"--- {label}\n{traceback.format_exc()}\n")
            self.console.print(f"[red]✗ {label} failed: {record.error}")
            raise StageFailed(label) from error
        except BaseException:  # Ctrl-C or a signal: the report is still written, with this stage marked
            record.status = "interrupted"
            raise
        finally:
            if saved is None:
                record.seconds = time.time() - begin
                if path is not None and record.status == "ok":
                    atomic_write_text(path, json.dumps({"seconds": record.seconds, "result": state.result}))
            self.report.stages.append(record)
            if record.status == "ok":
                self.console.print(f"[green]✓ {label}[/] in {record.seconds:.1f} s" + (" (earlier run)" if saved else ""))

    def run(self) -> CompareReport:
        try:
            self.prepare()
            for method, seed, probe in self.experiment.jobs():
                self.run_method(method, seed, probe)
                self.write(plots=False)
            self.bench()
            self.analyses()
        except StageFailed:
            pass  # recorded; the report says which stage and why
        finally:
            self.report.total_seconds = time.time() - self.started
            self.write(plots=True)
        return self.report

    def prepare(self) -> None:
        e = self.experiment
        if e.embedded:
            self.prepare_embedded()
        elif isinstance(e.base, GgufBase):
            from ..gguf_base import gguf_base_folder, prepare_gguf_base

            with self.stage("base"):
                cached = (gguf_base_folder(e.base.gguf, self.cache_dir) / "config.json").is_file()
                self.base = str(prepare_gguf_base(e.base.gguf, self.cache_dir))
                self.report.base["note"] = f"de-quantised, {'cached' if cached else 'converted and cached'} at {self.base}"
        else:
            from ..checkpoint import resolve

            self.base = resolve(e.base)
        if e.wikipedia is not None:
            from ..data.wikipedia import WikipediaSettings, load_wikipedia

            with self.stage("corpus"):
                split = WikipediaSettings(**e.wikipedia.model_dump(exclude={"evaluate_on"}))
                self.corpus = load_wikipedia(split, self.cache_dir)
                self.report.corpus = self.corpus.stats()
                self.console.print(f"Wikipedia at {self.corpus.folder}: " + ", ".join(
                    f"{p} {c['documents']} articles" for p, c in self.report.corpus.items()))
        with self.stage("evaluation set-up"):
            self.prepare_evaluation()
        run = Run(method="base", seed=e.seeds[0])
        with self.stage("eval", "base", key="eval-base") as state:
            self.base_scores = self.evaluate(self.base, state)
        fill(run, self.base_scores)
        run.layers, run.params_total, run.params_added = self.base_shape
        self.report.runs.append(run)
        self.final_models["base"] = Path(self.base)
        self.describe_base(run)

    def prepare_embedded(self) -> None:
        from ..data.corpus import load_corpus
        from .embedded import base_folder, build_base, corpus_settings

        spec = self.experiment.base
        with self.stage("corpus"):
            self.corpus = load_corpus(corpus_settings(spec.corpus), self.cache_dir)
            self.report.corpus = self.corpus.stats()
            self.console.print(f"corpus at {self.corpus.folder}: " + ", ".join(
                f"{p} {c['documents']} docs, {c['characters']:,} chars" for p, c in self.report.corpus.items()))
        with self.stage("base"):
            folder = base_folder(self.corpus, spec.embedded, self.cache_dir)
            cached = (folder / "run" / "model").is_dir()
            self.base = build_base(self.corpus, spec.embedded, self.cache_dir)
            self.report.base["note"] = (f"a tiny Llama trained from scratch on the corpus's pre-training part, "
                                        f"{'cached' if cached else 'built'} at {self.base}")

    def describe_base(self, run: Run) -> None:
        e = self.experiment
        name = self.base if e.embedded else e.base.gguf if isinstance(e.base, GgufBase) else e.base
        self.report.base.update(name=str(name), layers=run.layers, parameters=run.params_total)

    def prepare_evaluation(self) -> None:
        from ..evaluate import EvalSettings, source_documents, task_manager, write_heldout_tasks
        from ..load import load_model

        e, spec = self.experiment, self.experiment.evaluation
        tasks, include = list(spec.tasks), [str(e.path(p)) for p in spec.include_paths]
        part = e.wikipedia.evaluate_on if e.wikipedia is not None else "heldout"
        heldout = self.corpus.texts(part) if self.corpus is not None else None
        self.ppl_documents = None
        if spec.perplexity is not None:
            documents = source_documents(spec.perplexity.data) if spec.perplexity.data else heldout
            self.ppl_documents = evenly(documents, spec.perplexity.documents)
        if EMBEDDED_MC_TASK in tasks:
            passages = [p for doc in heldout for p in doc.split("\n\n") if len(p.split()) >= MC_MIN_WORDS]
            include.append(str(write_heldout_tasks(evenly(passages, spec.mc_items), self.work / "tasks", seed=0)))
        self.manager = task_manager(include, tasks) if tasks else None  # one task index for every model
        ppl = spec.perplexity
        self.eval_settings = EvalSettings(
            tasks=tasks, include_paths=include, limit=spec.limit, num_fewshot=spec.num_fewshot, batch_size=spec.batch_size,
            headline=spec.headline, device=e.device, dtype=e.dtype, ppl_kinds=list(ppl.kinds) if ppl else [],
            ppl_max_length=ppl.max_length if ppl else None, ppl_stride=ppl.stride if ppl else None, seed=e.seeds[0])
        self.base_model = load_model(str(self.base), device=e.device, dtype=e.dtype)
        identity_text = "\n\n".join((self.ppl_documents or heldout or [])[:16])
        ids = self.base_model.tokenizer(identity_text, return_tensors="pt")["input_ids"]
        self.identity_ids = ids[:, : min(256, ids.shape[1])].to(e.device)

    # --- one method ------------------------------------------------------------------------------

    def run_method(self, method: str, seed: int, probe: bool = False) -> None:
        from ..growth import upscale_to_folder

        run = Run(method=method, seed=seed, probe=probe)
        self.report.runs.append(run)
        folder = self.work / f"{method}-seed{seed}"
        key = f"{method}-seed{seed}"
        try:
            grown = folder / "grown"
            with self.stage("grow", method, seed, key=f"grow-{key}") as state:
                if state.saved is None:
                    shutil.rmtree(grown, ignore_errors=True)  # a grow killed before its record
                    upscale_to_folder(self.experiment.recipe(method, str(self.base), seed), grown)
                    state.result = {}
            with self.stage("identity", method, seed, key=f"identity-{key}") as state:
                if state.saved is None:
                    state.result = self.identity(grown).model_dump()
                run.identity = Identity(**state.value)
                if method in self.experiment.identity_methods and not run.identity.held:
                    self.console.print(f"[yellow]! identity at insertion does not hold for {method}: "
                                       f"max |Δlogits| {run.identity.max_abs_diff:.2e}")
            if self.experiment.evaluation.before_cpt:
                with self.stage("eval before CPT", method, seed, key=f"eval-grown-{key}") as state:
                    if state.saved is None and run.identity.max_abs_diff == 0:  # the base's own function
                        state.result = {**state_result(self.base_scores, self.base_shape), "same_as_base": True}
                    scores = self.evaluate(grown, state)
                    scores.same_as_base = bool(state.value.get("same_as_base"))
                    run.before_cpt = scores
            with self.stage("cpt", method, seed, key=f"cpt-{key}") as state:
                if state.saved is None:
                    state.result = self.continued_pretraining(method, grown, folder / "cpt", seed).model_dump()
                run.cpt = Cpt(**state.value)
            model = folder / "cpt" / "model"
            with self.stage("eval", method, seed, key=f"eval-{key}") as state:
                fill(run, self.evaluate(model, state))
                run.layers, run.params_total, run.params_added = shape_of(state.value)
            if not probe and seed == self.experiment.seeds[0]:
                self.final_models[method] = model  # benchmarked, analysed
        except StageFailed:
            pass

    def identity(self, grown: Path) -> Identity:
        """Max |grown logits - base logits| on held-out tokens, before any training."""
        from ..load import load_model

        e = self.experiment
        model = load_model(str(grown), device=e.device, dtype=e.dtype).model
        with torch.no_grad():
            diff = (model(input_ids=self.identity_ids).logits.float()
                    - self.base_model.model(input_ids=self.identity_ids).logits.float()).abs().max().item()
        return Identity(max_abs_diff=diff, tolerance=IDENTITY_TOLERANCE,
                        held=math.isfinite(diff) and diff <= IDENTITY_TOLERANCE)

    def continued_pretraining(self, method: str, grown: Path, run_dir: Path, seed: int) -> Cpt:
        from ..train import train
        from ..train.rundir import RunFolder

        data = None
        if self.corpus is not None:  # CPT's own eval loss: the validation part where there is one
            part = "validation" if "validation" in self.corpus.parts else "heldout"
            data = {"files": [str(self.corpus.file("cpt"))], "eval_files": [str(self.corpus.file(part))]}
        config = self.experiment.train_config(method, str(grown), str(run_dir), seed, data)
        launcher = self.experiment.launcher
        if launcher.kind == "torchrun":
            config_file = run_dir.with_name("cpt.yaml")
            config_file.write_text(config.to_yaml())
            command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launcher.nproc_per_node}",
                       f"--nnodes={launcher.nnodes}", *(["--standalone"] if launcher.nnodes == 1 else []),
                       "-m", "midus", "train", str(config_file)]
            if subprocess.run(command).returncode != 0:
                raise MidusError(f"CPT under torchrun failed: {' '.join(command)}")
        else:
            train(config)  # resumes from the last checkpoint of a run killed before
        tokens_per_step = config.tokens_per_step
        records = RunFolder(run_dir).records()
        train_records = [r for r in records if r.get("kind") == "train"]
        eval_records = [r for r in records if r.get("kind") == "eval"]
        evals = [(r["step"] * tokens_per_step, r["eval_loss"]) for r in eval_records]
        memory = {k.removeprefix("eval_memory_"): v for k, v in (eval_records[-1] if eval_records else {}).items()
                  if k.startswith("eval_memory_")}
        memory_curve = [(r["step"] * tokens_per_step, r["eval_memory_share/mean"], r["eval_memory_removal/all"])
                        for r in eval_records if "eval_memory_share/mean" in r]
        summary = next((r for r in records if r.get("kind") == "summary"), {})
        return Cpt(tokens=config.total_steps * tokens_per_step, steps=config.total_steps,
                   seconds=summary.get("train_runtime"), final_loss=train_records[-1]["loss"] if train_records else None,
                   eval_loss=evals[-1][1] if evals else None,
                   curve=[(r["tokens"], r["loss"]) for r in train_records], eval_curve=evals,
                   tokens_per_s=statistics.median(rates) if (rates := [r["tokens_per_s"] for r in train_records
                                                                         if "tokens_per_s" in r]) else None,
                   memory=memory,
                   memory_curve=memory_curve)

    def evaluate(self, folder: Path | str, state: StageState) -> Scores:
        """Perplexities and tasks with every item's score (from the stage's saved result on a rerun)."""
        from ..evaluate import evaluate_model
        from ..load import load_model

        if state.saved is None and state.result is None:
            e = self.experiment
            loaded = load_model(str(folder), device=e.device, dtype=e.dtype)
            result = evaluate_model(loaded.model, loaded.tokenizer, self.eval_settings, name=str(folder),
                                    documents=self.ppl_documents, manager=self.manager, items=True)
            document = result.perplexity.get("document")
            scores = Scores(
                perplexity={k: p.value for k, p in result.perplexity.items() if math.isfinite(p.value)},
                tasks={t.task: TaskScore(value=t.value, metric=t.headline, stderr=t.stderr, samples=t.samples)
                       for t in result.tasks},
                items=result.items, document_nll=document.per_document if document else [])
            added = loaded.added_parameters if loaded.added_parameters is not None else 0
            state.result = state_result(scores, (loaded.model.config.num_hidden_layers, result.parameters, added))
        saved = state.value
        if self.base_shape is None:
            self.base_shape = shape_of(saved)
        return Scores(**{k: v for k, v in saved.items() if k in Scores.model_fields})

    # --- bench and report ------------------------------------------------------------------------

    def bench(self) -> None:
        from ..bench import BenchSettings, bench

        spec, e = self.experiment.bench, self.experiment
        models = {m: p for m, p in self.final_models.items() if p.is_dir()}
        if spec is None or not models:
            return
        with self.stage("bench", key="bench") as state:
            if state.saved is None:
                reference = models.get(e.reference) or next(iter(models.values()))
                settings = BenchSettings(device=e.device, dtype=e.dtype, train_seq_len=spec.train_seq_len,
                                         prefill_len=spec.prefill_len, decode_tokens=spec.decode_tokens,
                                         repeats=spec.repeats, warmup=spec.warmup, threads=spec.threads, seed=e.seeds[0])
                # rounds over all models, so a burst of load on a shared CPU hits every model, not one
                rounds = [bench([str(p) for p in models.values()], settings, reference=str(reference), isolate=False)
                          for _ in range(spec.rounds)]
                state.result = {"figures": bench_figures(models, rounds),
                                 "shapes": {m: [x.layers, x.params_total] for m, path in models.items()
                                            for x in rounds[0].models if x.name == str(path)}}
                atomic_write_text(self.out / "bench.md", "\n".join(result.to_markdown() for result in rounds))
            self.report.bench = {m: BenchFigures(**f) for m, f in state.value["figures"].items()}
            shapes = {m: tuple(shape) for m, shape in state.value["shapes"].items()}
            self.report.timing_noise = timing_noise(self.report.bench, shapes)

    def analyses(self) -> None:
        """`midus analyze` of the first seed's models after CPT, on the Wiki-PPL documents."""
        from ..analysis import AnalyzeSettings, analyze, summary_markdown, write_report

        spec, e = self.experiment.analyze, self.experiment
        if spec is None or not self.ppl_documents:
            return
        text = self.work / "analysis-text.jsonl"
        for method in spec.methods:
            model = self.final_models.get(method)
            if model is None or not model.is_dir():
                continue
            try:
                with self.stage("analyze", method, key=f"analyze-{method}") as state:
                    if state.saved is None:
                        if not text.is_file():
                            atomic_write_text(text, "".join(json.dumps({"text": d}) + "\n" for d in self.ppl_documents))
                        settings = AnalyzeSettings(data=[str(text)], seq_len=spec.seq_len, max_tokens=spec.max_tokens,
                                                   batch_size=spec.batch_size, device=e.device, dtype=e.dtype,
                                                   removal=spec.removal, permutations=spec.permutations, seed=e.seeds[0])
                        result = analyze(str(model), settings)
                        folder = self.out / "analysis" / method
                        shutil.rmtree(folder, ignore_errors=True)  # an analysis killed before its record
                        write_report(result, folder)
                        state.result = {"folder": str(folder.relative_to(self.out)), "summary": summary_markdown(result)}
                    self.report.analyses[method] = state.value
            except StageFailed:
                pass

    def write(self, plots: bool) -> None:
        from .plots import write_plots

        self.report.summarise()
        write_report_files(self.out, {"results.json": self.report.to_json() + "\n",  # both or neither:
                                      "results.md": self.report.to_markdown()})  # a full disk replaces nothing
        if plots:
            try:
                write_plots(self.report, self.out)
            except Exception as error:  # noqa: BLE001 - a plot must not lose the tables
                self.console.print(f"[red]✗ plots failed: {one_line(error)}")


# --- helpers ---------------------------------------------------------------------------------------

def state_result(scores: Scores, shape: tuple[int, int, int]) -> dict:
    """An evaluation stage's stored result: its scores and the model's (layers, parameters, added)."""
    layers, params_total, params_added = shape
    return {"layers": layers, "params_total": params_total, "params_added": params_added,
            **scores.model_dump(exclude={"same_as_base"})}


def shape_of(saved: dict) -> tuple[int, int, int]:
    return saved["layers"], saved["params_total"], saved["params_added"]


def fill(run: Run, scores: Scores) -> None:
    run.perplexity, run.tasks, run.items, run.document_nll = (scores.perplexity, scores.tasks, scores.items,
                                                              scores.document_nll)


def bench_figures(models: dict[str, Path], rounds: list) -> dict:
    figures = {}
    for method, path in models.items():
        measured = [next(m for m in result.models if m.name == str(path)) for result in rounds]
        decode = sorted(1e3 * m.decode_s_per_token.median for m in measured)
        figures[method] = BenchFigures(
            train_tokens_per_s=statistics.median(m.train_tokens_per_s for m in measured),
            train_step_ms=statistics.median(1e3 * m.train_step_s.median for m in measured),
            prefill_ms=statistics.median(1e3 * m.prefill_s.median for m in measured),
            decode_ms_per_token=statistics.median(decode), decode_ms_low=decode[0], decode_ms_high=decode[-1],
        ).model_dump()
    return figures


def one_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if isinstance(error, MidusError) else f"{type(error).__name__}: {text}"


def evenly(items: list, count: int | None) -> list:
    """`count` items spread evenly over the list (all of them if count is None or not smaller), so a
    subset of held-out documents that come in module (or article) order covers all of them."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def timing_noise(figures: dict[str, BenchFigures], shapes: dict[str, tuple]) -> dict | None:
    """Models of one architecture (same depth and parameter count, other weights) time the same work:
    the largest relative spread (max - min) / median within such a group is the timing noise."""
    groups: dict[tuple, list[str]] = {}
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


def environment(device: str = "cpu") -> dict:
    import transformers

    name = (torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") and torch.cuda.is_available()
            else f"cpu ({platform.machine()}, {os.cpu_count()} cores)")
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": device, "device_name": name, "threads": torch.get_num_threads(), "argv": " ".join(sys.argv)}


def run_comparison(experiment: Experiment, out: str | Path, *, overwrite: bool = False,
                   cache_dir: str | Path | None = None, command: str = "midus compare") -> CompareReport:
    """Run (or resume) `experiment` into `out`; returns the report."""
    from .plan import check

    check(experiment)  # every recipe fits the base, every task exists: before any stage runs
    out = Path(out)
    replace = check_comparison_folder(out, experiment, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM / SIGUSR1 (SLURM, Kubernetes): CPT checkpoints at its step, other stages finish, then it stops
    with folder_lock(out, "midus compare"), catch_preemption() as preemption, torch_threads(experiment.threads):
        if replace:
            clear_but_lock(out)
        (out / STAGES_DIR).mkdir(exist_ok=True)
        atomic_write_text(out / EXPERIMENT_FILE, experiment.to_yaml())
        comparison = Comparison(experiment, out, cache_dir=Path(cache_dir) if cache_dir else None, command=command,
                                preemption=preemption)
        return comparison.run()
