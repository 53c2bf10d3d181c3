"""`midus eval`: perplexity (rolling and per-document) and lm-evaluation-harness tasks, for any set of
models, as one side-by-side table (Markdown + JSON)."""

from ..data.sources import TextSource, source_documents
from .harness import PRESETS, TaskResult, run_tasks, resolve_tasks, task_manager
from .offline import MC_TASK, PPL_TASK, TAG, heldout_choice_items, write_heldout_tasks
from .perplexity import Perplexity, document_perplexity, perplexities, rolling_perplexity
from .report import EvalReport, EvalSettings, ModelEval
from .run import evaluate_model, evaluate_models, write_report

__all__ = [
    "EvalReport", "EvalSettings", "MC_TASK", "ModelEval", "PPL_TASK", "PRESETS", "Perplexity", "TAG", "TaskResult",
    "TextSource", "document_perplexity", "evaluate_model", "evaluate_models", "heldout_choice_items",
    "perplexities", "resolve_tasks", "rolling_perplexity", "run_tasks", "source_documents", "task_manager",
    "write_heldout_tasks", "write_report",
]
