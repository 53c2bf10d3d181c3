"""The shared report pieces: the JSON envelope, all-or-none writing, Markdown tables."""

import pytest

from midus.errors import MidusError

from midus.report import Report, markdown_table, write_report_files


class Example(Report, schema="midus.example/1"):
    name: str
    values: list[int] = []


def test_the_schema_id_comes_first_under_schema_and_reads_back():
    report = Example(name="a", values=[1, 2])
    assert report.to_json() == '{\n  "schema": "midus.example/1",\n  "name": "a",\n  "values": [\n    1,\n    2\n  ]\n}'
    assert Example.model_validate_json(report.to_json()) == report
    assert Example.model_validate({"schema": "midus.example/0", "name": "b"}).schema_id == "midus.example/0"


def test_a_markdown_table_aligns_per_column_and_keeps_empty_cells():
    assert markdown_table(["a", "b", "c"], [["1", "", "3"], ["x", "y", "z"]], "lr") == [
        "| a | b | c |", "|---|---:|---|", "| 1 |  | 3 |", "| x | y | z |"]
    assert markdown_table(["", ""], [["key", "value"]]) == ["| | |", "|---|---|", "| key | value |"]


def test_report_files_are_written_all_or_none(tmp_path):
    out = tmp_path / "new" / "out"

    def failing_plot(path):
        path.write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    with pytest.raises(MidusError, match="No space left on device; nothing in"):
        write_report_files(out, {"r.md": "# r\n", "r.json": "{}\n", "r.png": failing_plot})
    assert not (tmp_path / "new").exists()

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "r.md").write_text("old\n")
    with pytest.raises(MidusError, match="No space left on device; nothing in"):
        write_report_files(tmp_path / "kept", {"r.md": "new\n", "r.png": failing_plot})
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["r.md"] and (tmp_path / "kept" / "r.md").read_text() == "old\n"

    paths = write_report_files(out, {"r.md": "# r\n", "r.png": lambda path: path.write_bytes(b"png")})
    assert paths == [out / "r.md", out / "r.png"]
    assert (out / "r.md").read_text() == "# r\n" and (out / "r.png").read_bytes() == b"png"
    assert sorted(p.name for p in out.iterdir()) == ["r.md", "r.png"]
