"""`midus analyze` end to end on a MIDUS folder and a plain Llama folder, and every bad input:
one line, non-zero exit, no report folder."""

import json

import pytest

from cli_helpers import assert_one_line_error, run_cli

FAST = ["--seq-len", "32", "--max-tokens", "256", "--batch-size", "4"]
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return run_cli("analyze", *args)


def assert_failed(result, out, *fragments, code=None):
    """One error line, and no output folder, finished or half-written."""
    assert_one_line_error(result, *fragments, code=code)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_analyze_midus_folder_writes_the_report(midus_folder, heldout_files, tmp_path):
    out = tmp_path / "report"
    result = run(midus_folder, "--data", heldout_files / "heldout.txt", "--out", out, *FAST,
                 "--permutations", "2", "--retrain-values", "--retrain-steps", "5")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "analysis.json", "summary.md", "head_importance.json", "head_importance.png", "fixed_retrieval.json",
        "fixed_retrieval.png", "usage.json", "usage.png"}
    meta = json.loads((out / "analysis.json").read_text())
    assert meta["schema"] == "midus.analyze/1" and meta["model_type"] == "midus"
    assert meta["stack"] == "D D M* D M* D" and meta["memory_blocks"] == 2
    assert meta["windows"] == 8 and meta["tokens"] == 8 * 31
    assert meta["reports"] == {s: f"{s}.json" for s in ("head_importance", "fixed_retrieval", "usage")}
    importance = json.loads((out / "head_importance.json").read_text())
    assert importance["schema"] == "midus.analyze.head_importance/1" and len(importance["blocks"]) == 6
    assert importance["baseline_loss"] == pytest.approx(meta["baseline_loss"])
    fixed = json.loads((out / "fixed_retrieval.json").read_text())
    assert [b["layer"] for b in fixed["blocks"]] == [2, 4]
    assert len(fixed["value_retraining"]["blocks"]) == 2
    usage = json.loads((out / "usage.json").read_text())
    assert [b["layer"] for b in usage["blocks"]] == [2, 4]
    for png in ("head_importance", "fixed_retrieval", "usage"):
        assert (out / f"{png}.png").read_bytes().startswith(PNG)
    summary = (out / "summary.md").read_text()
    for heading in ("# Analysis of", "## Head importance", "## Fixed retrieval", "### Retraining the value path",
                    "## Memory usage", "Most important heads", "head-specificity"):
        assert heading in summary
    assert summary in result.stdout


def test_analyze_plain_llama_measures_attention_heads_only(tiny_base, heldout_files, tmp_path):
    out = tmp_path / "report"
    result = run(tiny_base, "--data", heldout_files / "heldout.jsonl", "--text-field", "body", "--out", out, *FAST,
                 "--no-removal")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"analysis.json", "summary.md", "head_importance.json", "head_importance.png"}
    meta = json.loads((out / "analysis.json").read_text())
    assert meta["model_type"] == "llama" and meta["memory_blocks"] == 0 and meta["reports"] == {"head_importance": "head_importance.json"}
    importance = json.loads((out / "head_importance.json").read_text())
    assert all(b["kind"] == "decoder" and b["removal"] is None and len(b["gradient"]) == 4 for b in importance["blocks"])
    summary = (out / "summary.md").read_text()
    assert "fixed retrieval and memory usage do not apply" in summary and "## Fixed retrieval" not in summary


def test_missing_model_folder(heldout_files, tmp_path):
    out = tmp_path / "report"
    result = run(tmp_path / "no-model", "--data", heldout_files / "heldout.txt", "--out", out)
    assert_failed(result, out, "no-model", "no such folder", code=1)


def test_missing_data(tiny_base, tmp_path):
    out = tmp_path / "report"
    assert_failed(run(tiny_base, "--data", tmp_path / "nothing.txt", "--out", out), out,
                          "nothing.txt", "no such file or folder", code=2)
    assert_failed(run(tiny_base, "--out", out), out, "--data", code=2)
    (tmp_path / "no-text").mkdir()
    assert_failed(run(tiny_base, "--data", tmp_path / "no-text", "--out", out), out, "no-text", code=2)


def test_empty_data(tiny_base, heldout_files, tmp_path):
    out = tmp_path / "report"
    result = run(tiny_base, "--data", heldout_files / "empty.txt", "--out", out, *FAST)
    assert_failed(result, out, "empty.txt")


def test_too_little_text_for_one_window(tiny_base, heldout_files, tmp_path):
    out = tmp_path / "report"
    (tmp_path / "short.txt").write_text("A few words.")
    result = run(tiny_base, "--data", tmp_path / "short.txt", "--out", out, "--seq-len", "64")
    assert_failed(result, out, "less than one window of seq_len=64", code=2)


def test_seq_len_beyond_positions(tiny_base, heldout_files, tmp_path):
    out = tmp_path / "report"
    result = run(tiny_base, "--data", heldout_files / "heldout.txt", "--out", out, "--seq-len", "1024")
    assert_failed(result, out, "seq-len 1024", "512 positions", code=2)


@pytest.mark.parametrize("option, value, fragment", [
    ("--batch-size", "0", "batch_size: got 0"), ("--seq-len", "1", "seq_len: got 1"), ("--dtype", "float8", "float8"),
    ("--max-tokens", "16", "max_tokens 16"),
])
def test_bad_options(tiny_base, heldout_files, tmp_path, option, value, fragment):
    out = tmp_path / "report"
    result = run(tiny_base, "--data", heldout_files / "heldout.txt", "--out", out, "--seq-len", "32", option, value)
    assert_failed(result, out, fragment, code=2)


def test_existing_report_folder_is_refused(tiny_base, heldout_files, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run(tiny_base, "--data", heldout_files / "heldout.txt", "--out", out, *FAST)
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_no_report_folder_when_the_analysis_fails(tiny_base, heldout_files, tmp_path, monkeypatch):
    import midus.analysis.report as report

    def broken(result, path):
        path.write_bytes(b"half")
        raise RuntimeError("plotting failed")

    monkeypatch.setitem(report.PLOTS, "head_importance", broken)
    out = tmp_path / "report"
    result = run(tiny_base, "--data", heldout_files / "heldout.txt", "--out", out, *FAST, "--no-removal")
    assert result.exit_code != 0 and isinstance(result.exception, RuntimeError)
    assert not out.exists() and not list(tmp_path.glob(".report.tmp*"))
