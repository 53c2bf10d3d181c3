"""The demo end to end at its smallest size (preset `test`): every stage runs, the report holds."""

import json
import math
import shutil

import pytest

from midus.demo import DemoReport, preset, run_demo
from midus.demo.pipeline import MARKER
from midus.demo.settings import RECIPES
from midus.errors import UsageError
from midus.recipe import METHODS

NUMBERS = ("params_total", "params_added", "ppl_rolling", "ppl_document", "accuracy")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("midus-cache")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(preset("test"), out, cache_dir=cache, command="midus demo (test preset)")


def test_every_method_has_finite_numbers(demo):
    out, report = demo
    assert not report.failures(), report.failures()
    rows = {r.method: r for r in report.rows}
    assert list(rows) == ["base", *METHODS]
    for method, row in rows.items():
        for field in NUMBERS:
            value = getattr(row, field)
            assert value is not None and math.isfinite(value), (method, field, value)
        assert 0 <= row.accuracy <= 1
        bench = report.bench[method]
        assert bench.train_tokens_per_s > 0 and bench.decode_ms_per_token > 0
    groups = report.timing_noise["groups"]  # models of one architecture measure the bench's noise
    assert ["base", "none"] in groups and ["solar", "llama-pro", "lesa"] in groups
    for run in report.runs:
        if run.method != "base":
            assert run.cpt is not None and run.cpt.curve and math.isfinite(run.cpt.final_loss)
            assert run.cpt.tokens == report.settings["cpt_tokens"]  # the same budget for every method


def test_midus_adds_under_a_quarter_of_llama_pro(demo):
    rows = {r.method: r for r in demo[1].rows}
    assert rows["none"].params_added == 0
    assert rows["llama-pro"].params_added == rows["solar"].params_added > 0
    assert 0 < rows["midus"].params_added < rows["llama-pro"].params_added / 4


def test_identity_at_insertion_before_cpt(demo):
    runs = {r.method: r for r in demo[1].runs}
    for method in ("llama-pro", "midus"):
        assert runs[method].identity.held and runs[method].identity.max_abs_diff <= 1e-5
    assert runs["solar"].identity.max_abs_diff > 1e-3  # not function-preserving: the check can tell


def test_report_files_exist_and_parse(demo):
    out, report = demo
    parsed = DemoReport.model_validate(json.loads((out / "results.json").read_text()))
    assert parsed.rows == report.rows and parsed.runs == report.runs
    markdown = (out / "results.md").read_text()
    for name in ("CPT-Base", "SOLAR", "LLaMA Pro (ref)", "LESA", "PKM", "MIDUS (HML)"):
        assert f"| {name} |" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| MIDUS")][0]
    assert table.count("×)") >= 5  # every figure with its ratio to LLaMA Pro
    for png in ("cpt_loss.png", "params_vs_ppl.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_demo_reuses_the_cached_base_and_reports_a_failed_stage(demo, cache, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(RECIPES / "llama-pro.yaml", recipes)
    (recipes / "midus.yaml").write_text((RECIPES / "midus.yaml").read_text().replace("topk: 4", "topk: 99"))
    out = demo[0].parent / "second"
    report = run_demo(preset("test", methods=("llama-pro", "midus")), out, cache_dir=cache, recipes_dir=recipes)
    assert report.base["cached"] and report.base["folder"] == demo[1].base["folder"]
    failed = report.failures()
    assert [(f.stage, f.method) for f in failed] == [("grow", "midus")] and "topk" in failed[0].error
    assert [r.method for r in report.rows] == ["base", "llama-pro"]
    assert "**Failed stages:** grow midus" in (out / "results.md").read_text()


def test_out_dir_that_is_not_a_demo_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a demo folder"):
        run_demo(preset("test"), tmp_path)
    assert (tmp_path / "keep.txt").exists() and not (tmp_path / MARKER).exists()
