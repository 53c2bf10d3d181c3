"""`midus analyze`: load a model and held-out text, run the analyses that apply, write the report.

MIDUS model (memory blocks): head importance (memory heads and attention heads), fixed retrieval
(and, on request, value-path retraining), memory usage. Plain or DUS-grown Llama-family model: head
importance of its attention heads only; the memory analyses do not apply and the summary says so.
"""

from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, Field

from ..checkpoint import DtypeName, check_family, check_out_dir, load_config, load_tokenizer
from ..data.loading import batches_of, expand_files, token_windows
from ..data.sources import load_texts
from ..errors import MidusError, UsageError
from ..load import is_recipe, load_model
from ..recipe import Recipe
from ..report import Report, stack_letters
from ..schema import YamlModel
from .fixed_retrieval import FixedRetrieval, fixed_retrieval_analysis
from .head_importance import HeadImportance, head_importance
from .probes import blocks
from .usage import MemoryUsage, memory_usage
from .value_retraining import retrain_values

SCHEMA = "midus.analyze/1"
RETRAIN_HELDOUT = 0.25  # share of the windows held out to score the retrained value paths


class AnalyzeSettings(YamlModel):
    """What `midus analyze` runs; every field is a `--set` key (and a flag of its own)."""

    kind: ClassVar[str] = "analyze settings"

    data: list[str] = Field(description="held-out text: .txt / .jsonl / .json / .parquet files, globs or folders")
    text_field: str = Field("text", description="the field holding the text in .jsonl / .json / .parquet files")
    seq_len: int = Field(256, ge=2, description="tokens per window (at most the model's positions)")
    max_tokens: int = Field(16384, ge=1, description="at most this many tokens, in max_tokens // seq_len windows")
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    dtype: DtypeName = Field("float32", description="dtype the model is loaded in")
    removal: bool = Field(True, description="measure head removal exactly (one pass per head); off: the gradient "
                                            "estimate only")
    permutations: int = Field(3, ge=0, description="fixed retrieval: random derangements of the projections per block")
    retrain_values: bool = Field(False, description="fixed retrieval: retrain the value path from scratch and an FFN "
                                                    "of equal parameters")
    retrain_steps: int = Field(300, ge=1, description="optimizer steps of each retraining")
    retrain_lr: float = Field(3e-3, gt=0, description="Adam learning rate of the retraining")
    seed: int = Field(0, description="permutations, retraining and initialisation")


class Analysis(Report, schema=SCHEMA):
    model: str
    model_type: str
    stack: str = Field(description="the layers: D decoder, M memory, P pkm; * added by growth")
    memory_blocks: int
    settings: AnalyzeSettings
    files: list[str] = Field(description="the data files read")
    windows: int
    tokens: int = Field(description="scored tokens (seq_len - 1 per window)")
    baseline_loss: float
    notes: list[str]
    head_importance: HeadImportance
    fixed_retrieval: FixedRetrieval | None
    usage: MemoryUsage | None


def analyze(model_name: str, settings: AnalyzeSettings, *, progress: bool = True) -> Analysis:
    """Run every analysis that applies to `model_name` on the settings' data."""
    files = expand_files(settings.data)  # every input is checked before the weights are loaded
    source = Recipe.from_yaml(model_name).base if is_recipe(model_name) else model_name
    config = load_config(source)
    if config.model_type != "midus":
        check_family(config, source)
    positions = getattr(config, "max_position_embeddings", None)
    if positions and settings.seq_len > positions:
        raise UsageError(f"seq-len {settings.seq_len} exceeds the model's {positions} positions (max_position_embeddings)")
    try:
        tokenizer = load_tokenizer(source)
    except MidusError:
        raise MidusError(f"{source}: no usable tokenizer in the model folder; the analyses tokenize text with it") from None
    windows = token_windows(load_texts(files, settings.text_field), tokenizer,
                            settings.seq_len, settings.max_tokens)
    if settings.retrain_values and len(windows) < 2:
        raise UsageError(f"--retrain-values needs at least 2 windows to fit and score on; got {len(windows)} "
                         "(add text, raise --max-tokens or lower --seq-len)")
    model = load_model(model_name, dtype=settings.dtype, device=settings.device).model
    batches = batches_of(windows, settings.batch_size, settings.device)
    stack = blocks(model)
    memory = [block for block in stack if block.kind == "memory"]
    notes = []

    torch.manual_seed(settings.seed)
    importance = head_importance(model, batches, removal=settings.removal, progress=progress)
    fixed = usage = None
    if memory:
        fixed = fixed_retrieval_analysis(model, batches, permutations=settings.permutations, seed=settings.seed,
                                         progress=progress)
        if settings.retrain_values:
            split = len(windows) - max(1, round(RETRAIN_HELDOUT * len(windows)))
            fixed.value_retraining = retrain_values(
                model, batches_of(windows[:split], settings.batch_size, settings.device),
                batches_of(windows[split:], settings.batch_size, settings.device),
                steps=settings.retrain_steps, lr=settings.retrain_lr, seed=settings.seed, progress=progress)
    else:
        notes.append("The model has no MIDUS memory blocks: fixed retrieval and memory usage do not apply; "
                     "only the attention heads' importance was measured.")
    if any(block.retrieval is not None for block in stack):
        usage = memory_usage(model, batches, progress=progress)
    if any(block.kind == "pkm" for block in stack):
        notes.append("pkm blocks: their attention heads are in head importance and their product-key memory in "
                     "memory usage; fixed retrieval applies to HIVE memory blocks only.")
    if not settings.removal:
        notes.append("Head removal was not measured (--no-removal): head importance is the gradient estimate only.")

    return Analysis(
        model=model_name, model_type=model.config.model_type,
        stack=stack_letters([b.kind for b in stack], [b.new for b in stack]), memory_blocks=len(memory),
        settings=settings, files=files, windows=len(windows),
        tokens=importance.tokens, baseline_loss=importance.baseline_loss, notes=notes,
        head_importance=importance, fixed_retrieval=fixed, usage=usage,
    )


def analyze_to_folder(model_name: str, settings: AnalyzeSettings, out_dir: str | Path, *, progress: bool = True) -> list[Path]:
    """`analyze`, then write its report to `out_dir` (a new folder, written atomically)."""
    from .report import write_report

    check_out_dir(out_dir)  # before any slow work
    return write_report(analyze(model_name, settings, progress=progress), out_dir)
