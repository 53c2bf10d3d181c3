"""Held-out text for the analyses: local files (.txt, .jsonl / .json with a text field, .parquet)
read by the evaluation loader (`midus.data.sources`), tokenized with the model's tokenizer, every
document followed by EOS, concatenated, and cut into windows of exactly `seq_len` tokens."""

import glob
from contextlib import contextmanager
from pathlib import Path

import datasets
import torch

from ..data.loading import BUILDERS
from ..errors import UsageError
from ..data.sources import TextSource, source_documents

TOKENIZE_CHUNK = 256  # documents per tokenizer call


def data_files(patterns: list[str]) -> list[Path]:
    """Files named, globbed, or found (recursively) in the folders given; one-line errors otherwise."""
    if not patterns:
        raise UsageError("no data: give at least one --data file or folder")
    files = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
            if not found:
                raise UsageError(f"data folder {pattern}: no {', '.join(BUILDERS)} files in it")
            files += found
        elif path.is_file():
            files.append(path)
        elif matches := sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file()):
            files += matches
        else:
            raise UsageError(f"data {pattern}: no such file or folder")
    if unknown := sorted({f.suffix or f.name for f in files if f.suffix.lower() not in BUILDERS}):
        raise UsageError(f"data files of type {', '.join(unknown)}: supported are {', '.join(BUILDERS)}")
    return files


def load_texts(patterns: list[str], text_field: str = "text") -> list[str]:
    """The non-empty documents of every file, in order (a .txt file: one per blank-line paragraph)."""
    documents = []
    with quiet_datasets():
        for path in data_files(patterns):
            documents += source_documents(TextSource(path=str(path), text_field=text_field))
    return documents


@contextmanager
def quiet_datasets():
    """No `datasets` progress bars while reading a few local files (an error stays one line)."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def token_windows(documents: list[str], tokenizer, seq_len: int, max_tokens: int) -> torch.Tensor:
    """[W, seq_len] token ids: documents (+ EOS) packed into at most max_tokens // seq_len windows."""
    if seq_len < 2:
        raise UsageError(f"seq_len {seq_len}: must be at least 2 tokens")
    if max_tokens < seq_len:
        raise UsageError(f"max_tokens {max_tokens} is less than one window of seq_len={seq_len}")
    wanted = max_tokens // seq_len * seq_len
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(documents), TOKENIZE_CHUNK):
        for ids in tokenizer(documents[start: start + TOKENIZE_CHUNK])["input_ids"]:
            stream += ids if eos is None or (ids and ids[-1] == eos) else ids + [eos]
        if len(stream) >= wanted:
            break
    count = min(len(stream), wanted) // seq_len
    if count == 0:
        raise UsageError(f"data: {len(stream)} tokens, less than one window of seq_len={seq_len}; "
                         "add text or lower --seq-len")
    return torch.tensor(stream[: count * seq_len]).view(count, seq_len)


def batches_of(windows: torch.Tensor, batch_size: int, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    return [chunk.to(device) for chunk in windows.split(batch_size)]
