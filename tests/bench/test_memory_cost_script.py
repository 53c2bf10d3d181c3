"""benchmarks/memory_cost.py's report, from the committed run: its table is what the script writes from
its JSON, its goals are issue 13's, its plot is a PNG."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("memory_cost", RESULTS.parent / "memory_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results():
    return json.loads((RESULTS / "memory_cost.json").read_text())


def test_the_committed_table_is_the_one_its_json_gives(script, results):
    assert script.markdown(results) == (RESULTS / "memory_cost.md").read_text()


def row(results, width, threads, path="kernels", inference="eager"):
    return next(r for r in results["added_cost"] if (r["width"], r["threads"], r["path"], r["inference"])
                == (width, threads, path, inference))


def test_goals_are_issue_13s_bounds(script, results):
    smol, big = row(results, "SmolLM2-135M", 1), row(results, "Llama-3.2-1B", 1)
    assert script.goal_limit(smol, "decode_s_per_token") == ("≤ 0.5", 0.5)
    assert script.goal_limit(smol, "train_step_s") == ("≤ parameter ratio", smol["param_ratio"])
    assert script.goal_limit(smol, "prefill_s") is None
    assert script.goal_limit(big, "prefill_s") == ("≤ 1.15 × FLOP ratio", 1.15 * big["flop_ratio"]["prefill_s"])
    assert script.goal_limit(row(results, "Llama-3.2-1B", 1, path="pytorch"), "prefill_s") is None  # a reference
    smol = copy.deepcopy(smol)
    smol["phases"]["decode_s_per_token"]["ratio"] = 0.5
    assert script.goal_text(smol, "decode_s_per_token") == "≤ 0.5 (0.50): met"
    smol = copy.deepcopy(smol)
    smol["phases"]["decode_s_per_token"]["ratio"] = 0.51
    assert script.goal_text(smol, "decode_s_per_token") == "≤ 0.5 (0.50): not met"


def test_from_json_writes_the_table_and_a_plot(script, results, tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text(json.dumps(results))
    monkeypatch.setattr("sys.argv", ["memory_cost.py", "--from-json", str(tmp_path / "run.json"),
                                     "--out", str(tmp_path / "out")])
    script.main()
    assert (tmp_path / "out" / "memory_cost.md").read_text() == script.markdown(results)
    assert json.loads((tmp_path / "out" / "memory_cost.json").read_text()) == results
    assert (tmp_path / "out" / "memory_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cases_take_turns_in_an_order_rotating_from_round_to_round(script):
    calls = []
    cases = {name: (calls.append, (name,)) for name in "abc"}
    times = script.interleaved(cases, repeats=4, warmup=1)
    assert calls == list("abc") + list("abc" "bca" "cab" "abc")
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 4, "b": 4, "c": 4}


def sections_args(script, out, *argv):
    import argparse

    args = argparse.Namespace(threads=[1], rounds=11, tokens=256, compile=False, pytorch_path=False, out=out,
                              sections=list(script.SECTIONS))
    for name, value in zip(argv[::2], argv[1::2]):
        setattr(args, name, value)
    return args


def test_sections_measures_some_and_keeps_the_rest_of_the_saved_run(script, results, tmp_path, monkeypatch):
    (tmp_path / "memory_cost.json").write_text(json.dumps(results))
    remeasured = copy.deepcopy(results["training_memory"])
    remeasured["memory block"]["saved_activations_mib"] = 1.0
    monkeypatch.setattr(script, "training_memory", lambda tokens: remeasured)
    again = script.measure(sections_args(script, tmp_path, "sections", ["training_memory"]))
    assert again["training_memory"] == remeasured
    for section in ("added_cost", "product_key_memory", "breakdown"):
        assert again[section] == results[section] and again["measured"][section] == results["measured"][section]
    assert again["measured"]["training_memory"] != results["measured"]["training_memory"]
    assert "Measured: " in script.markdown(again)


def test_sections_without_a_saved_run_or_with_other_rounds_is_a_one_line_error(script, results, tmp_path):
    with pytest.raises(SystemExit, match="holds no run to keep the rest of"):
        script.measure(sections_args(script, tmp_path, "sections", ["training_memory"]))
    (tmp_path / "memory_cost.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="11 rounds, not .* and 7"):
        script.measure(sections_args(script, tmp_path, "sections", ["training_memory"], "rounds", 7))
