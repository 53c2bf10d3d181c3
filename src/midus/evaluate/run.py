"""Evaluating models: perplexities of held-out text and lm-evaluation-harness tasks, each model in
turn, into one `EvalReport`."""

from pathlib import Path

from tqdm.auto import tqdm

from ..data.sources import source_documents
from ..errors import UsageError
from ..load import check_model_name, load_model
from ..parameters import count_parameters
from ..report import write_report_files
from .harness import item_scores, load_tasks, resolve_tasks, run_tasks, task_manager
from .perplexity import perplexities
from .report import EvalReport, EvalSettings, ModelEval, is_fraction


def evaluate_model(model, tokenizer, settings: EvalSettings, *, name: str = "model", documents: list[str] | None = None,
                   manager=None, items: bool = False) -> ModelEval:
    """Evaluate an in-memory model: perplexities of `documents` (or of `settings.ppl_data`) and the tasks;
    `items`: keep every item's score too (`ModelEval.items`, for paired tests)."""
    if documents is None and settings.ppl_data is not None:
        documents = source_documents(settings.ppl_data)
    result = ModelEval(name=name, parameters=count_parameters(model))
    if documents:
        if tokenizer is None:
            raise UsageError(f"{name}: no tokenizer; perplexity needs one (save it in the model folder)")
        result.perplexity = perplexities(model, tokenizer, documents, kinds=settings.ppl_kinds,
                                         max_length=settings.ppl_max_length, stride=settings.ppl_stride,
                                         batch_size=settings.batch_size)
    if settings.tasks:
        result.tasks, raw = run_tasks(model, tokenizer, settings.tasks, include_paths=settings.include_paths,
                                      limit=settings.limit, batch_size=settings.batch_size,
                                      num_fewshot=settings.num_fewshot, headline=settings.headline,
                                      seed=settings.seed, manager=manager, log_samples=items)
        if items:
            result.items = {t.task: item_scores(raw, t) for t in result.tasks}
        accuracies = [t.value for t in result.tasks if is_fraction(t.headline)]
        result.average = sum(accuracies) / len(accuracies) if accuracies else None
    return result


def evaluate_models(names: list[str], settings: EvalSettings) -> EvalReport:
    """Load each model (folder, hub id or recipe) in turn and evaluate it; bad task names, task data
    that needs the network and unreadable perplexity data fail before any model is loaded."""
    if not settings.tasks and settings.ppl_data is None:
        raise UsageError("nothing to evaluate: give --tasks and/or --ppl-data")
    for name in names:
        positions = check_model_name(name)
        if settings.ppl_data is not None and settings.ppl_max_length and positions and settings.ppl_max_length > positions:
            raise UsageError(f"{name}: max length {settings.ppl_max_length} exceeds the model's {positions} positions "
                             "(max_position_embeddings)")
    manager = None
    if settings.tasks:
        manager = task_manager(settings.include_paths, settings.tasks)
        load_tasks(resolve_tasks(settings.tasks, manager), manager)  # fail fast (offline data, bad files)
    documents = source_documents(settings.ppl_data) if settings.ppl_data is not None else None
    rows = []
    with tqdm(names, desc="models", unit="model", disable=len(names) < 2) as bar:
        for name in bar:
            loaded = load_model(name, dtype=settings.dtype, device=settings.device)
            rows.append(evaluate_model(loaded.model, loaded.tokenizer, settings, name=name, documents=documents,
                                       manager=manager))
            del loaded
    return EvalReport(settings=settings, models=rows)


def write_report(report, out_dir: str | Path, stem: str) -> list[Path]:
    """`stem`.md and `stem`.json in `out_dir` (created), both or neither; returns the paths."""
    return write_report_files(out_dir, {f"{stem}.md": report.to_markdown(), f"{stem}.json": report.to_json() + "\n"})
