"""The demo's table and noise arithmetic on hand-made runs (no model)."""

import math

import pytest

from midus.demo.report import DemoReport, Run, measure_noise, separation, to_markdown


def run(method, seed, ppl, doc=None, acc=0.5, added=100):
    return Run(method=method, seed=seed, layers=6, params_total=1000, params_added=added, ppl_rolling=ppl,
               ppl_document=doc or ppl, accuracy=acc, accuracy_metric="acc_norm")


def test_pooled_noise_is_the_root_mean_of_per_method_variances():
    runs = [run("llama-pro", 0, 100.0), run("llama-pro", 1, 102.0), run("midus", 0, 50.0), run("midus", 1, 50.0),
            run("solar", 0, 80.0), run("base", 0, 120.0)]  # one seed: no variance; the base never counts
    noise = measure_noise(runs)
    a = [100 / 101, 102 / 101]
    variance = sum((x - 1) ** 2 for x in a) / (len(a) - 1)
    assert noise.methods == ["llama-pro", "midus"] and noise.seeds == [0, 1]
    assert noise.ppl_rolling_sd == pytest.approx(math.sqrt((variance + 0) / 2))
    assert noise.accuracy_sd == 0
    assert measure_noise([run("midus", 0, 50.0), run("llama-pro", 0, 60.0)]) is None


def test_rows_average_the_settings_seeds_and_separation_uses_the_noise():
    runs = [run("base", 0, 130.0, added=0), run("llama-pro", 0, 100.0), run("llama-pro", 1, 102.0),
            run("midus", 0, 90.0, added=20), run("midus", 1, 91.0, added=20), run("none", 0, 101.0, added=0),
            run("none", 1, 100.0, added=0), run("none", 7, 100.8, added=0)]  # seed 7: a noise probe, not in the table
    report = DemoReport(command="test", preset="test", environment={}, runs=runs,
                        settings={"methods": ["none", "llama-pro", "midus"], "seeds": [0, 1]})
    report.summarise()
    assert [r.method for r in report.rows] == ["base", "none", "llama-pro", "midus"]
    none, ref, midus = report.row("none"), report.row("llama-pro"), report.row("midus")
    assert none.seeds == [0, 1] and none.ppl_rolling == pytest.approx(100.5) and none.ppl_rolling_spread == 0.5
    assert ref.ppl_rolling == pytest.approx(101.0) and midus.ppl_rolling == pytest.approx(90.5)
    line = separation(report)[0]
    beyond, within = line.split("within it:")
    assert "MIDUS (HML) -10.4%" in beyond and "CPT-Base" in within  # -10% is far beyond a ~1% noise, -0.5% is not
    markdown = to_markdown(report)
    assert "| MIDUS (HML) | 6 | 20 (0.20×) | 90.50 ± 0.50 (0.90×) |" in markdown
