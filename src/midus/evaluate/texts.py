"""Evaluation text: documents from local files (.txt / .jsonl / .json / .parquet) or a hub dataset,
read by the training data loader (`midus.data.datasets.load_documents`), so eval and training take
their text the same way."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ..data.datasets import BUILDERS, load_documents as load_raw
from ..errors import MidusError


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


def load_documents(source: TextSource) -> list[str]:
    """The non-empty documents of `source`, in order."""
    from ..train.config import DataConfig

    where = {"files": [source.path]} if source.is_local else {"dataset": source.path, "name": source.name}
    data = DataConfig(**where, text_field=source.text_field, txt_unit=source.sample_by)
    raw = load_raw(data, files=data.files, split=None if source.is_local else source.split)
    documents = [text for text in raw[source.text_field] if isinstance(text, str) and text.strip()]
    if source.max_documents is not None:
        documents = documents[: source.max_documents]
    if not documents:
        raise MidusError(f"data {source.describe()}: no non-empty documents in field {source.text_field!r}")
    return documents
