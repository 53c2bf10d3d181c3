"""What every report shares: the JSON envelope (`Report`), writing its files all or none
(`write_report_files`), its Markdown tables (`markdown_table`) and how a stack of layers is written
(`stack_letters`)."""

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from .checkpoint import write_files

KIND_LETTERS = {"decoder": "D", "memory": "M", "pkm": "P"}  # a layer's kind in one letter


class Report(BaseModel):
    """A report's JSON document: its schema id first, under the key "schema"; a subclass names its id
    as `class EvalReport(Report, schema="midus.eval/1")`."""

    schema_id: str = Field(alias="schema")

    model_config = {"populate_by_name": True}

    def __init_subclass__(cls, schema: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if schema is not None:
            cls.schema_id = Field(schema, alias="schema")  # the field stays first, as in the base

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)


def write_report_files(out_dir: str | Path, files: dict[str, str | Callable[[Path], object]]) -> list[Path]:
    """Write `files` into `out_dir` (created), all or none (`checkpoint.write_files`): each is its text
    or a function writing it at a path (a plot); returns their paths."""
    return write_files(out_dir, {name: content if callable(content) else (lambda path, text=content: path.write_text(text))
                                 for name, content in files.items()})


def markdown_table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A Markdown table's lines: the header, its separator and the rows; `align` has a letter per column,
    "r" right-aligned, anything else (or none) left. An empty header cell is written `| |`."""
    marks = ["---:" if a == "r" else "---" for a in align.ljust(len(header))]
    return ["|" + "".join(f" {cell} |" if cell else " |" for cell in header), "|" + "".join(m + "|" for m in marks),
            *("| " + " | ".join(row) + " |" for row in rows)]


def stack_letters(kinds: list[str], new: list[bool] | None = None) -> str:
    """"D D M D": a stack of layers by kind, each one growth added marked * (where `new` is given)."""
    return " ".join(KIND_LETTERS[kind] + ("*" if added else "") for kind, added in zip(kinds, new or [False] * len(kinds)))
