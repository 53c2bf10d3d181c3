"""Where text comes from: `DataConfig` (training data), `TextSource` (evaluation text) and `load_texts`
(the analyses' files), all read by `midus.data.loading.load_documents`, so every command takes its text the same way."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from ..errors import MidusError
from ..schema import Strict
from .loading import BUILDERS, load_documents, quiet_datasets


class DataConfig(Strict):
    """Where the text comes from and how it becomes training sequences."""

    files: list[str] | None = Field(None, description="local .txt / .jsonl / .json / .parquet files (globs allowed), all of one type")
    dataset: str | None = Field(None, description="instead of files: a hub dataset id (or any `datasets.load_dataset` path)")
    name: str | None = Field(None, description="hub dataset config name (e.g. sample-10BT)")
    split: str = Field("train", description="hub dataset split to train on")
    streaming: bool = Field(False, description="read the data as a stream (hub-scale data; no full download, no shuffling)")
    format: Literal["text", "instruction"] = Field("text", description="text: plain documents; instruction: prompt/response pairs, loss on the response only")
    text_field: str = Field("text", description="format text: the field holding each document")
    txt_unit: Literal["paragraph", "line", "document"] = Field(
        "paragraph", description=".txt files: what one document is (blank-line separated paragraph, line, or whole file)")
    prompt_field: str | list[str] = Field(
        "prompt", description="format instruction: the prompt field, or several joined by blank lines (e.g. [instruction, input])")
    response_field: str = Field("response", description="format instruction: the response field (e.g. output)")
    template: str = Field("{prompt}\n\n", description="format instruction: the text before the response; {prompt} is the prompt")
    chat_template: bool = Field(False, description="format instruction: lay out prompt and response with the tokenizer's chat template instead of `template`")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of the documents held out for evaluation (ignored with eval_split / eval_files; streaming holds out the first eval_sequences sequences instead)")
    eval_split: str | None = Field(None, description="hub dataset split held out for evaluation (e.g. validation)")
    eval_files: list[str] | None = Field(None, description="local files held out for evaluation")
    eval_sequences: int = Field(64, ge=0, description="at most this many held-out sequences are evaluated; 0 turns evaluation off")
    cache_dir: str | None = Field(None, description="cache of loaded and tokenized data (default: the `datasets` cache)")
    num_proc: int | None = Field(None, ge=1, description="processes for tokenizing (map-style data only)")

    @model_validator(mode="after")
    def _source(self):
        if (self.files is None) == (self.dataset is None):
            raise ValueError("give exactly one of data.files (local files) or data.dataset (a hub dataset)")
        if self.files is not None and not self.files:
            raise ValueError("data.files is empty")
        if self.eval_split is not None and self.dataset is None:
            raise ValueError("data.eval_split applies to a hub dataset (data.dataset) only; use data.eval_files with local files")
        if self.eval_split is not None and self.eval_files is not None:
            raise ValueError("give at most one of data.eval_split and data.eval_files")
        if self.num_proc is not None and self.streaming:
            raise ValueError("data.num_proc does not apply to streaming data")
        if "{prompt}" not in self.template:
            raise ValueError("data.template must contain {prompt}")
        return self

    @property
    def prompt_fields(self) -> list[str]:
        return [self.prompt_field] if isinstance(self.prompt_field, str) else list(self.prompt_field)


class TextSource(BaseModel):
    """Where evaluation documents come from."""

    path: str = Field(description="a local file (.txt, .jsonl, .json, .parquet) or a hub dataset id")
    name: str | None = Field(None, description="hub dataset config (e.g. wikitext-2-raw-v1)")
    split: str = Field("test", description="hub dataset split")
    text_field: str = Field("text", description="the field holding each document (.jsonl / .parquet / hub)")
    sample_by: Literal["paragraph", "line", "document"] = Field(
        "paragraph", description=".txt files: one document per blank-line separated paragraph, line, or file")
    max_documents: int | None = Field(None, ge=1, description="keep the first N documents (None: all)")

    @property
    def is_local(self) -> bool:
        return Path(self.path).suffix.lower() in BUILDERS or Path(self.path).exists()

    def describe(self) -> str:
        if self.is_local:
            return self.path
        return self.path + (f" ({self.name})" if self.name else "") + f", split {self.split}"


def source_documents(source: TextSource) -> list[str]:
    """The non-empty documents of `source`, in order."""
    where = {"files": [source.path]} if source.is_local else {"dataset": source.path, "name": source.name}
    data = DataConfig(**where, text_field=source.text_field, txt_unit=source.sample_by)
    raw = load_documents(data, files=data.files, split=None if source.is_local else source.split)
    documents = [text for text in raw[source.text_field] if isinstance(text, str) and text.strip()]
    if source.max_documents is not None:
        documents = documents[: source.max_documents]
    if not documents:
        raise MidusError(f"data {source.describe()}: no non-empty documents in field {source.text_field!r}")
    return documents


def load_texts(files: list[str], text_field: str = "text") -> list[str]:
    """The non-empty documents of every file (as `expand_files` lists them), file by file in order, so
    files of different types may be mixed (a .txt file: one per paragraph)."""
    documents = []
    with quiet_datasets():
        for path in files:
            documents += source_documents(TextSource(path=path, text_field=text_field))
    return documents
