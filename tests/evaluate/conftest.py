import inspect

import pytest
import torch

from midus.checkpoint import save_model
from midus.evaluate import MC_TASK, PPL_TASK, TAG, write_heldout_tasks
from midus.evaluate.harness import LOCAL_TASKS, task_manager
from midus.load import load_model
from model_helpers import grow


def stdlib_docstrings() -> list[str]:
    """Held-out text: docstrings of modules the tiny tokenizer was not trained on."""
    import argparse, functools, string  # noqa: E401

    docs = {inspect.getdoc(obj) for module in (argparse, functools, string) for _, obj in inspect.getmembers(module)}
    return sorted(doc for doc in docs if doc and len(doc.split()) >= 30)


@pytest.fixture(scope="session")
def heldout_docs():
    return stdlib_docstrings()


@pytest.fixture(scope="session")
def midus_folder(tiny_base, tmp_path_factory):
    """A MIDUS model grown from the tiny base whose memory blocks do something (P made non-zero)."""
    model = grow(tiny_base, "midus")
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():  # the zero-initialised HIVE projections
                param.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("midus") / "model"
    save_model(model, load_model(str(tiny_base)).tokenizer, folder)
    return folder


@pytest.fixture(scope="session")
def offline_tasks(heldout_docs, tmp_path_factory):
    return write_heldout_tasks(heldout_docs[:40], tmp_path_factory.mktemp("tasks"), seed=0)


@pytest.fixture(scope="session")
def manager(offline_tasks):
    """A task index of the offline tasks and our local ones alone (lm-eval's own are not indexed)."""
    manager = task_manager([offline_tasks], tasks=[MC_TASK])
    local = [p.stem for p in LOCAL_TASKS.glob("local_*.yaml")] + ["local", "local_paper"]
    assert manager.all_tasks == sorted([MC_TASK, PPL_TASK, TAG, *local])
    return manager


@pytest.fixture(scope="session")
def full_manager(offline_tasks):
    """lm-eval's whole task index plus the offline tasks (indexing ~14k configs takes seconds: once)."""
    return task_manager([offline_tasks])
