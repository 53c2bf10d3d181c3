"""The settings of `midus eval`, `bench` and `analyze` from the command line: every field an option or a
`--set` key, flags over `--set` over the model's defaults, and the model's checks as one-line errors."""

import pytest

import midus.analysis
import midus.bench
import midus.evaluate
from cli_helpers import assert_one_line_error, run_cli
from midus.analysis import AnalyzeSettings
from midus.bench import BenchSettings
from midus.evaluate import EvalSettings


class Captured(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """The settings each verb would run with (it stops there)."""
    seen = {}

    def capture(names, settings, *args, **kwargs):
        seen["settings"] = settings
        raise Captured

    monkeypatch.setattr(midus.evaluate, "evaluate_models", capture)
    monkeypatch.setattr(midus.bench, "bench", capture)
    monkeypatch.setattr(midus.analysis, "analyze_to_folder", capture)
    return seen


def settings_of(captured, *args):
    result = run_cli(*args)
    assert isinstance(result.exception, Captured), result.output
    return captured["settings"]


def test_defaults_are_the_models_own(captured):
    assert settings_of(captured, "bench", "m") == BenchSettings()
    assert settings_of(captured, "eval", "m", "--tasks", "x") == EvalSettings(tasks=["x"])
    assert settings_of(captured, "analyze", "m", "--data", "t.txt", "--out", "o") == AnalyzeSettings(data=["t.txt"])


def test_flags_and_set_reach_every_field(captured):
    settings = settings_of(captured, "eval", "m", "--ppl-data", "t.jsonl", "--text-field", "body", "--max-length", 64,
                           "--stride", 16, "--ppl-kind", "document", "--limit", "8", "--set", "ppl_data.sample_by=line",
                           "--set", "include_paths=[a, b]", "--set", "batch_size=3")
    assert settings.ppl_data.model_dump() == {"path": "t.jsonl", "name": None, "split": "test", "text_field": "body",
                                              "sample_by": "line", "max_documents": None}
    assert (settings.ppl_max_length, settings.ppl_stride, settings.ppl_kinds) == (64, 16, ["document"])
    assert settings.limit == 8 and isinstance(settings.limit, int)  # a whole number of documents, not a fraction
    assert settings.include_paths == ["a", "b"] and settings.batch_size == 3
    assert settings_of(captured, "eval", "m", "--tasks", "x", "--limit", "0.5").limit == 0.5
    bench = settings_of(captured, "bench", "m", "--seq-len", 32, "--set", "decode_tokens=4", "--threads", 1)
    assert bench == BenchSettings(train_seq_len=32, decode_tokens=4, threads=1)
    analyze = settings_of(captured, "analyze", "m", "-d", "a.txt", "-d", "b.txt", "--no-removal", "--retrain-values",
                          "--set", "retrain_lr=0.01", "--out", "o")
    assert analyze == AnalyzeSettings(data=["a.txt", "b.txt"], removal=False, retrain_values=True, retrain_lr=0.01)


def test_a_flag_given_wins_over_set_and_a_default_flag_does_not(captured):
    assert settings_of(captured, "bench", "m", "--set", "repeats=9", "--repeats", 2).repeats == 2
    assert settings_of(captured, "bench", "m", "--set", "repeats=9").repeats == 9
    # a flag given with its default value is given all the same
    assert settings_of(captured, "bench", "m", "--set", "repeats=9", "--repeats", 5).repeats == 5


@pytest.mark.parametrize("args, fragments", [
    (["eval", "m", "--tasks", "x", "--headline", "best"], ["headline: got 'best'", "one of auto, acc, acc_norm"]),
    (["eval", "m", "--tasks", "x", "--ppl-kind", "sliding"], ["ppl_kinds", "one of rolling, document"]),
    (["eval", "m", "--ppl-data", "t.txt", "--max-length", 32, "--stride", 64], ["ppl_stride: 64", "window length"]),
    (["eval", "m", "--tasks", "x", "--batch-size", 0], ["batch_size: got 0", "an integer >= 1"]),
    (["eval", "m", "--tasks", "x", "--set", "topk=3"], ["topk: unknown field", "valid fields: tasks"]),
    (["eval", "m", "--tasks", "x", "--set", "limit"], ["override 'limit'", "expected KEY=VALUE"]),
    (["bench", "m", "--dtype", "fp8"], ["bench settings: dtype: got 'fp8'", "float32, bfloat16, float16"]),
    (["bench", "m", "--set", "warmup=-1"], ["warmup: got -1", "an integer >= 0"]),
    (["analyze", "m", "--out", "o"], ["data is required", "--data"]),
    (["analyze", "m", "-d", "t.txt", "--out", "o", "--retrain-lr", 0], ["retrain_lr: got 0", "a number > 0"]),
])
def test_bad_settings_are_one_line_errors(captured, args, fragments):
    result = run_cli(*args)
    assert_one_line_error(result, *fragments, code=2)
    assert "settings" not in captured  # refused before any work


def test_the_demo_takes_set_overrides_of_its_experiment(tmp_path):
    result = run_cli("demo", "--quick", "--set", "seeds=oops", "--out", tmp_path / "demo")
    assert_one_line_error(result, "seeds: got 'oops'", "a list of integers", code=2)
    assert not (tmp_path / "demo").exists()
