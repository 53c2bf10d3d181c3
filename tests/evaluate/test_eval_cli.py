import json
import os
import subprocess
import sys
import textwrap

import pytest

from midus.evaluate import MC_TASK, EvalReport
from cli_helpers import assert_one_line_error, run_cli as run


@pytest.fixture(scope="module")
def ppl_file(heldout_docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("ppl") / "heldout.jsonl"
    path.write_text("".join(json.dumps({"body": doc}) + "\n" for doc in heldout_docs[:8]))
    return path


def test_eval_cli_writes_the_side_by_side_table(midus_folder, tiny_base, offline_tasks, ppl_file, tmp_path):
    result = run("eval", tiny_base, midus_folder, "--tasks", MC_TASK, "--include-path", offline_tasks,
                 "--limit", 8, "--ppl-data", ppl_file, "--text-field", "body", "--max-length", 64, "--stride", 32,
                 "--batch-size", 4, "--json", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json(result.stdout)
    assert report.model_dump(by_alias=True)["schema"] == "midus.eval/1"
    assert [m.name for m in report.models] == [str(tiny_base), str(midus_folder)]
    for model in report.models:
        assert set(model.perplexity) == {"rolling", "document"}
        assert model.perplexity["document"].documents == 8 and model.perplexity["rolling"].stride == 32
        (task,) = model.tasks
        assert task.samples == 8 and {"acc", "acc_norm"} <= set(task.metrics)
        assert model.average == task.value
    markdown = (tmp_path / "eval.md").read_text()
    assert f"{MC_TASK} (acc_norm)" in markdown and "Wiki-PPL" in markdown and "± " in markdown
    assert EvalReport.model_validate_json((tmp_path / "eval.json").read_text()) == report


def test_plain_lm_eval_cli_on_a_saved_midus_folder(midus_folder, offline_tasks, manager, tmp_path):
    """lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True in a process that never
    imports midus: the remote code runs, and it scores as our in-process path does."""
    script = textwrap.dedent(f"""
        import sys
        from lm_eval.__main__ import cli_evaluate
        sys.argv = ["lm_eval", "--model", "hf", "--model_args",
                    "pretrained={midus_folder},trust_remote_code=True,dtype=float32", "--tasks", "{MC_TASK}",
                    "--include_path", "{offline_tasks}", "--device", "cpu", "--batch_size", "4", "--limit", "10",
                    "--output_path", "{tmp_path / 'out'}"]
        try:
            cli_evaluate()
        finally:
            print("MIDUS IMPORTED:", any(m == "midus" or m.startswith("midus.") for m in sys.modules))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MIDUS IMPORTED: False" in done.stdout
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    cli_acc = json.loads(results_file.read_text())["results"][MC_TASK]["acc,none"]

    from midus.evaluate import run_tasks
    from midus.load import load_model

    loaded = load_model(str(midus_folder))
    (row,), _ = run_tasks(loaded.model, loaded.tokenizer, [MC_TASK], limit=10, batch_size=4, manager=manager)
    assert cli_acc == pytest.approx(row.metrics["acc"].value)


def test_bad_inputs_are_one_line_errors(midus_folder, offline_tasks, tmp_path):
    assert_one_line_error(run("eval", tmp_path / "no" / "such" / "model", "--tasks", MC_TASK), "no such folder",
                          code=1)
    assert_one_line_error(run("eval", midus_folder, "--tasks", "arc_eazy"), "unknown task 'arc_eazy'", "arc_easy",
                          code=2)
    assert_one_line_error(run("eval", midus_folder, "--tasks", "winogrande"), "task winogrande", "needs the network",
                          code=1)
    assert_one_line_error(run("eval", midus_folder), "nothing to evaluate", code=2)
    text = tmp_path / "t.txt"
    text.write_text("some held-out words\n\nand another paragraph of them\n")
    assert_one_line_error(run("eval", midus_folder, "--ppl-data", text, "--max-length", 100000), "exceeds the model's 512 positions",
                          code=2)
    assert_one_line_error(run("eval", midus_folder, "--ppl-data", tmp_path / "missing.jsonl"), "no such file",
                          code=2)
    assert_one_line_error(run("eval", midus_folder, "--ppl-data", "some-org/some-dataset"), "some-org/some-dataset",
                          code=2)


def test_a_midus_folder_is_loaded_with_the_installed_classes_not_its_shipped_code(midus_folder, ppl_file, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(midus_folder, folder)
    for name in ("modeling_midus.py", "configuration_midus.py"):
        (folder / name).write_text('raise RuntimeError("the folder\'s code ran")\n')
    reports = []
    for model in (midus_folder, folder):
        result = run("eval", model, "--ppl-data", ppl_file, "--text-field", "body", "--max-length", 64, "--json")
        assert result.exit_code == 0, result.output
        reports.append(EvalReport.model_validate_json(result.stdout).models[0].perplexity)
    assert reports[0] == reports[1]


def test_pickle_weights_need_an_explicit_flag(tiny_base, ppl_file, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"  # the tiny base with its weights as a pickle file (transformers 5 saves none)
    shutil.copytree(tiny_base, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(tiny_base / "model.safetensors"), folder / "pytorch_model.bin")
    args = ["eval", folder, "--ppl-data", ppl_file, "--text-field", "body", "--max-length", 64, "--json"]
    assert_one_line_error(run(*args), f"{folder}: its weights are pickle files (*.bin)", "--allow-pickle-weights", code=1)
    try:
        allowed = run("--allow-pickle-weights", *args)
    finally:
        os.environ.pop("MIDUS_ALLOW_PICKLE_WEIGHTS", None)
    assert allowed.exit_code == 0, allowed.output
    expected = run("eval", tiny_base, *args[2:])
    assert EvalReport.model_validate_json(allowed.stdout).models[0].perplexity == \
        EvalReport.model_validate_json(expected.stdout).models[0].perplexity
