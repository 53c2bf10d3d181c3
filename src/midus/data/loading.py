"""Text for every command: local files (named, globbed or in folders: `expand_files`) or a hub dataset,
loaded with `datasets`, tokenized and packed (`build_datasets` for training, `token_windows` for the
analyses).

Documents are tokenized (the tokenizer's own BOS, if it adds one), each followed by EOS, concatenated
and cut into sequences of exactly `seq_len` tokens. Instruction pairs are laid out as prompt +
response + EOS with labels -100 on the prompt, so only response tokens carry loss. Map-style data is
tokenized once and cached by `datasets` (fingerprinted); streaming data is tokenized on the fly.
"""

import glob
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # `datasets` is imported where data is read: the settings that name files load without it
    from datasets import Dataset, IterableDataset

from ..checkpoint import first_line
from ..errors import UsageError

IGNORE_INDEX = -100  # label of tokens that carry no loss
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
MAP_BATCH = 1000  # documents per tokenize/pack batch (the tail of each packed batch is dropped)
TOKENIZE_CHUNK = 256  # documents per tokenizer call in token_windows


class DataError(UsageError):
    """Training data that cannot be used."""


def load_documents(data, files: list[str] | None = None, split: str | None = None) -> "Dataset | IterableDataset":
    """The raw documents of `data` (a DataConfig): its local `files`, or a split of its hub dataset."""
    import datasets

    if files is not None:
        paths = expand_files(files)
        builder = file_builder(paths)
        source = ", ".join(paths) if len(paths) <= 3 else f"{paths[0]} and {len(paths) - 1} more files"
        if all(Path(p).stat().st_size == 0 for p in paths):
            raise DataError(f"data {source}: no documents (empty)")
        options = {"sample_by": data.txt_unit, "keep_linebreaks": data.txt_unit != "line"} if builder == "text" else {}
        call = dict(path=builder, data_files=paths, split="train", **options)
    else:
        source = data.dataset + (f" ({data.name})" if data.name else "") + f" split {split}"
        call = dict(path=data.dataset, name=data.name, split=split)
    try:
        documents = datasets.load_dataset(**call, streaming=data.streaming, cache_dir=data.cache_dir)
    except (ConnectionError, ValueError, OSError, StopIteration, datasets.exceptions.DatasetNotFoundError,
            datasets.exceptions.DatasetGenerationError) as error:
        raise DataError(f"data {source}: cannot load it ({first_line(error)})") from None
    check_fields(documents, required_fields(data), source)
    if not data.streaming and len(documents) == 0:
        raise DataError(f"data {source}: no documents (empty)")
    return documents


@contextmanager
def quiet_datasets():
    """No `datasets` progress bars while reading a few local files (an error stays one line)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def expand_files(patterns: list[str]) -> list[str]:
    """The files named, globbed, or found (recursively, of a known type) in the folders given, in order;
    one-line errors for none given, a missing one, an empty folder, a file of an unknown type."""
    if not patterns:
        raise DataError("no data: give at least one --data file, glob or folder")
    paths = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
            if not found:
                raise DataError(f"data folder {pattern}: no {', '.join(BUILDERS)} files in it")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif matches := sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file()):
            paths += matches
        else:
            raise DataError(f"data file {pattern}: no such file or folder")
    if unknown := sorted({p.suffix or p.name for p in paths if p.suffix.lower() not in BUILDERS}):
        raise DataError(f"data files of type {', '.join(unknown)}: supported are {', '.join(BUILDERS)}")
    return [str(p) for p in paths]


def file_builder(paths: list[str]) -> str:
    suffixes = {Path(p).suffix.lower() for p in paths}  # all known: expand_files checked them
    builders = {BUILDERS[s] for s in suffixes}
    if len(builders) > 1:
        raise DataError(f"data files mix types ({', '.join(sorted(suffixes))}); give files of one type")
    return builders.pop()


def required_fields(data) -> list[str]:
    return [data.text_field] if data.format == "text" else [*data.prompt_fields, data.response_field]


def check_fields(documents, fields: list[str], source: str) -> None:
    columns = documents.column_names
    if columns is None:  # a stream of unknown features: look at its first document
        first = next(iter(documents), None)
        if first is None:
            raise DataError(f"data {source}: no documents (empty)")
        columns = list(first)
    if missing := [f for f in fields if f not in columns]:
        raise DataError(f"data {source}: no field {missing[0]!r}; its fields are {', '.join(columns)}")


# --- tokenizing ------------------------------------------------------------------------------------

def terminated(ids: list[int], eos: int | None) -> list[int]:
    """A document's token ids followed by EOS (once; nothing to add for a tokenizer without one)."""
    return ids if eos is None or (ids and ids[-1] == eos) else ids + [eos]


def cut_into(ids: list[int], seq_len: int) -> list[list[int]]:
    """Consecutive `seq_len`-token pieces of `ids`; an incomplete tail is dropped."""
    return [ids[i: i + seq_len] for i in range(0, len(ids) // seq_len * seq_len, seq_len)]


class Tokenize:
    """Batched map function: documents -> input_ids (+ labels for instruction pairs), EOS-terminated."""

    def __init__(self, tokenizer, data):
        self.tokenizer, self.data = tokenizer, data
        self.eos = tokenizer.eos_token_id

    def __call__(self, batch: dict) -> dict:
        if self.data.format == "text":
            ids = self.tokenizer(batch[self.data.text_field])["input_ids"]
            return {"input_ids": [self.terminated(x) for x in ids]}
        prompts = ["\n\n".join(str(batch[f][i]) for f in self.data.prompt_fields if batch[f][i])
                   for i in range(len(batch[self.data.response_field]))]
        pairs = [self.pair(p, str(r)) for p, r in zip(prompts, batch[self.data.response_field])]
        return {"input_ids": [ids for ids, _ in pairs], "labels": [labels for _, labels in pairs]}

    def terminated(self, ids: list[int]) -> list[int]:
        return terminated(ids, self.eos)

    def pair(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids of prompt + response + EOS, and labels that mask the prompt."""
        if self.data.chat_template:
            user = [{"role": "user", "content": prompt}]
            prompt_ids = self.tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
            ids = self.tokenizer.apply_chat_template(
                user + [{"role": "assistant", "content": response}], tokenize=True, return_dict=False)
            if ids[: len(prompt_ids)] != prompt_ids:
                raise DataError("the tokenizer's chat template does not render the prompt as a prefix of the conversation")
            ids = self.terminated(ids)
        else:
            prompt_ids = self.tokenizer(self.data.template.format(prompt=prompt))["input_ids"]
            ids = prompt_ids + self.terminated(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        return ids, [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]


class Pack:
    """Batched map function: concatenate token lists and cut them into `seq_len` sequences.

    The incomplete tail of each batch is dropped; with labels, sequences without any loss token
    (only prompt tokens after the first position) are dropped too."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def __call__(self, batch: dict) -> dict:
        packed = {"input_ids": cut_into(list(chain.from_iterable(batch["input_ids"])), self.seq_len)}
        if "labels" in batch:
            packed["labels"] = cut_into(list(chain.from_iterable(batch["labels"])), self.seq_len)
            keep = [any(t != IGNORE_INDEX for t in seq[1:]) for seq in packed["labels"]]
            packed = {key: [seq for seq, k in zip(column, keep) if k] for key, column in packed.items()}
        return packed


def tokenize_and_pack(documents, tokenizer, data, seq_len: int):
    """Raw documents -> sequences of exactly `seq_len` tokens (cached for map-style data)."""
    columns = documents.column_names or list(next(iter(documents)))
    options = {} if data.streaming else {"num_proc": data.num_proc, "desc": "tokenize"}
    tokens = documents.map(Tokenize(tokenizer, data), batched=True, batch_size=MAP_BATCH, remove_columns=columns, **options)
    options = {} if data.streaming else {"num_proc": data.num_proc, "desc": f"pack into {seq_len}-token sequences"}
    return tokens.map(Pack(seq_len), batched=True, batch_size=MAP_BATCH, **options)


def token_windows(documents: list[str], tokenizer, seq_len: int, max_tokens: int) -> torch.Tensor:
    """[W, seq_len] token ids for the analyses: documents (+ EOS) tokenized in order, concatenated into
    one stream (no tail dropped between documents) and cut into at most max_tokens // seq_len windows."""
    if seq_len < 2:
        raise DataError(f"seq_len {seq_len}: must be at least 2 tokens")
    if max_tokens < seq_len:
        raise DataError(f"max_tokens {max_tokens} is less than one window of seq_len={seq_len}")
    wanted = max_tokens // seq_len * seq_len
    stream: list[int] = []
    for start in range(0, len(documents), TOKENIZE_CHUNK):
        for ids in tokenizer(documents[start: start + TOKENIZE_CHUNK])["input_ids"]:
            stream += terminated(ids, tokenizer.eos_token_id)
        if len(stream) >= wanted:
            break
    if not (packed := cut_into(stream[:wanted], seq_len)):
        raise DataError(f"data: {len(stream)} tokens, less than one window of seq_len={seq_len}; "
                        "add text or lower --seq-len")
    return torch.tensor(packed)


def batches_of(windows: torch.Tensor, batch_size: int, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    return [chunk.to(device) for chunk in windows.split(batch_size)]


def has_sequence(sequences) -> bool:
    from datasets import IterableDataset

    if isinstance(sequences, IterableDataset):
        return next(iter(sequences), None) is not None
    return len(sequences) > 0


# --- train / held-out ------------------------------------------------------------------------------

def build_datasets(data, tokenizer, seq_len: int, seed: int) -> "tuple[Dataset | IterableDataset, Dataset | None]":
    """Training sequences and (at most `eval_sequences`) held-out sequences, or None without evaluation."""
    from datasets import Dataset, IterableDataset

    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token, which separates packed documents; use a tokenizer with one")
    documents = load_documents(data, data.files, data.split)
    held_out = None
    if data.eval_sequences:
        if data.eval_files is not None or data.eval_split is not None:
            held_out = load_documents(data, data.eval_files, data.eval_split)
        elif data.eval_fraction and not data.streaming:
            if len(documents) < 2:
                raise DataError("data: a single document cannot be split into training and held-out parts; "
                                "add documents, give data.eval_files, or set data.eval_fraction: 0")
            parts = documents.train_test_split(test_size=max(1, round(data.eval_fraction * len(documents))), seed=seed)
            documents, held_out = parts["train"], parts["test"]

    train = tokenize_and_pack(documents, tokenizer, data, seq_len)
    if not has_sequence(train):
        raise DataError(f"data: not even one training sequence of seq_len={seq_len} tokens; add text or lower seq_len")
    evaluation = None
    if held_out is not None:
        evaluation = tokenize_and_pack(held_out, tokenizer, data, seq_len)
        if isinstance(evaluation, IterableDataset):
            evaluation = Dataset.from_list(list(evaluation.take(data.eval_sequences)))
        evaluation = evaluation.select(range(min(len(evaluation), data.eval_sequences)))
    elif data.eval_sequences and data.streaming and data.eval_fraction:
        # a stream has no size to take a fraction of: hold out its first sequences instead
        evaluation = Dataset.from_list(list(train.take(data.eval_sequences)))
        train = train.skip(data.eval_sequences)
    if evaluation is not None and len(evaluation) == 0:
        raise DataError(f"data: the held-out part holds less than one sequence of seq_len={seq_len} tokens; "
                        "hold out more (data.eval_fraction, data.eval_files) or set data.eval_sequences: 0")
    return train, evaluation


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Stack packed sequences; plain text is its own label (the model shifts labels by one)."""
    input_ids = torch.tensor([f["input_ids"] for f in features])
    labels = torch.tensor([f["labels"] for f in features]) if "labels" in features[0] else input_ids.clone()
    return {"input_ids": input_ids, "labels": labels}
