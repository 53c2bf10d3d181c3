"""A comparison's table and noise arithmetic on hand-made runs (no model)."""

import math

import pytest

from midus.compare.report import CompareReport, Run, TaskScore, measure_noise, to_markdown

EXPERIMENT = {"name": "t", "methods": [{"name": m} for m in ("none", "llama-pro", "midus")], "seeds": [0, 1],
              "cpt": {}, "identity_methods": []}


def run(method, seed, ppl, acc=0.5, added=100, probe=False):
    return Run(method=method, seed=seed, probe=probe, layers=6, params_total=1000, params_added=added,
               perplexity={"rolling": ppl, "document": ppl}, tasks={"mc": TaskScore(value=acc, metric="acc_norm", stderr=0.01)})


def test_pooled_noise_is_the_root_mean_of_per_method_variances():
    runs = [run("llama-pro", 0, 100.0), run("llama-pro", 1, 102.0), run("midus", 0, 50.0), run("midus", 1, 50.0),
            run("solar", 0, 80.0), run("base", 0, 120.0)]  # one seed: no variance; the base never counts
    noise = measure_noise(runs)
    a = [100 / 101, 102 / 101]
    variance = sum((x - 1) ** 2 for x in a) / (len(a) - 1)
    assert noise.methods == ["llama-pro", "midus"] and noise.seeds == [0, 1]
    assert noise.perplexity_sd["rolling"] == pytest.approx(math.sqrt((variance + 0) / 2))
    assert noise.task_sd["mc"] == 0
    assert measure_noise([run("midus", 0, 50.0), run("llama-pro", 0, 60.0)]) is None


def test_rows_average_the_seeds_and_separations_use_the_noise():
    runs = [run("base", 0, 130.0, added=0), run("llama-pro", 0, 100.0), run("llama-pro", 1, 102.0),
            run("midus", 0, 90.0, added=20), run("midus", 1, 91.0, added=20), run("none", 0, 101.0, added=0),
            run("none", 1, 100.0, added=0), run("none", 7, 100.8, added=0, probe=True)]  # the probe: noise only
    report = CompareReport(command="test", experiment=EXPERIMENT, environment={}, runs=runs, reference="llama-pro")
    report.summarise()
    assert [r.method for r in report.rows] == ["base", "none", "llama-pro", "midus"]
    none, ref, midus = report.row("none"), report.row("llama-pro"), report.row("midus")
    assert none.seeds == [0, 1] and none.perplexity["rolling"] == pytest.approx(100.5)
    assert none.perplexity_spread["rolling"] == 0.5
    assert ref.perplexity["rolling"] == pytest.approx(101.0) and midus.perplexity["rolling"] == pytest.approx(90.5)
    separated = {(s.method, s.figure): s for s in report.separations}
    assert separated["midus", "ppl_rolling"].beyond and separated["midus", "ppl_rolling"].gap == pytest.approx(90.5 / 101 - 1)
    assert not separated["none", "ppl_rolling"].beyond  # -0.5% against a ~1% noise
    markdown = to_markdown(report)
    assert "| MIDUS (HML) | 6 | 20 (0.20×) | 90.50 ± 0.50 (0.90×) |" in markdown
    assert "beyond twice the noise of the gap: MIDUS (HML) ppl_rolling -10.4%" in markdown
