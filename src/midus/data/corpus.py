"""The embedded corpus: docstrings of the Python standard library, text every Python install carries.

    gather   `docstrings.py` in a child process: (module, qualified name, raw docstring), sorted
    clean    `inspect.cleandoc` (dedent, strip), trailing spaces and runs of blank lines removed;
             documents shorter than `min_chars` characters or `min_words` words dropped, then exact
             duplicates (the first, in module order, is kept)
    split    by module: sha256(module name) -> a number u in [0, 1); u < pretrain -> "pretrain",
             u < pretrain + cpt -> "cpt", else "heldout". A module's documents all fall in one part,
             so no part sees text from a module of another.

The result is cached in `cache_root()/corpus-<key>/` as one JSON-lines file per part
({"text", "module", "name"} per line) and `corpus.json` (settings and sizes); the key hashes the
Python version, this module's settings and CORPUS_VERSION, so the same Python gives the same files.
"""

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import MidusError
from . import docstrings

CORPUS_VERSION = 1  # bump when gathering or cleaning changes what a cache holds
PARTS = ("pretrain", "cpt", "heldout")
STATS_FILE = "corpus.json"


def cache_root() -> Path:
    """Where midus caches what it builds: $MIDUS_CACHE, else ~/.cache/midus."""
    return Path(os.environ.get("MIDUS_CACHE") or Path.home() / ".cache" / "midus").expanduser()


@dataclass(frozen=True)
class CorpusSettings:
    pretrain: float = 0.3  # share of the modules (by hash) in each part; held-out takes the rest
    cpt: float = 0.55
    min_chars: int = 40
    min_words: int = 6

    def __post_init__(self):
        if not (0 < self.pretrain and 0 < self.cpt and self.pretrain + self.cpt < 1):
            raise MidusError(f"corpus split pretrain={self.pretrain}, cpt={self.cpt}: both must be > 0 and sum below 1 "
                             "(held-out takes the rest)")

    def key(self) -> str:
        identity = {"version": CORPUS_VERSION, "python": sys.version, **asdict(self)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Document:
    text: str
    module: str
    name: str


@dataclass
class Corpus:
    """The three parts, their files on disk, and their sizes."""

    folder: Path
    settings: CorpusSettings
    parts: dict[str, list[Document]] = field(repr=False)

    def file(self, part: str) -> Path:
        return self.folder / f"{part}.jsonl"

    def texts(self, part: str) -> list[str]:
        return [doc.text for doc in self.parts[part]]

    def stats(self) -> dict:
        """Documents, modules and characters per part."""
        return {part: {"documents": len(docs), "modules": len({d.module for d in docs}),
                       "characters": sum(len(d.text) for d in docs)} for part, docs in self.parts.items()}

    def token_counts(self, tokenizer) -> dict[str, int]:
        """Tokens per part under `tokenizer` (no special tokens)."""
        return {part: sum(len(ids) for ids in tokenizer(self.texts(part), add_special_tokens=False)["input_ids"])
                for part in self.parts}


# --- gather, clean, split ------------------------------------------------------------------------

def gather(timeout: float = 600) -> list[tuple[str, str, str]]:
    """(module, qualified name, raw docstring) of the standard library, from a child process that
    imports only the standard library (-I: no user site, no environment, no script folder on sys.path)."""
    with tempfile.TemporaryDirectory(prefix="midus-docstrings-") as tmp:
        out = Path(tmp) / "docstrings.json"
        command = [sys.executable, "-I", docstrings.__file__, str(out)]
        try:
            process = subprocess.run(command, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MidusError(f"gathering the standard library's docstrings took more than {timeout:.0f} s") from None
        if process.returncode != 0 or not out.is_file():
            tail = (process.stderr.strip().splitlines() or ["no output"])[-1]
            raise MidusError(f"gathering the standard library's docstrings failed ({tail})")
        return [tuple(row) for row in json.loads(out.read_text(encoding="utf-8"))]


BLANK_RUNS = re.compile(r"\n{3,}")


def clean(text: str) -> str:
    """Dedented and stripped (`inspect.cleandoc`), no trailing spaces, at most one blank line in a row."""
    lines = [line.rstrip() for line in inspect.cleandoc(text).splitlines()]
    return BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def documents(rows, settings: CorpusSettings) -> list[Document]:
    """Cleaned documents, tiny ones and exact duplicates dropped, in the rows' order."""
    seen, out = set(), []
    for module, name, raw in rows:
        text = clean(raw)
        if len(text) < settings.min_chars or len(text.split()) < settings.min_words or text in seen:
            continue
        seen.add(text)
        out.append(Document(text=text, module=module, name=name))
    return out


def module_fraction(module: str) -> float:
    """A stable number in [0, 1) for a module name or an article's title (sha256, independent of
    PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(module.encode()).digest()[:8], "big") / 2**64


def part_of(module: str, settings: CorpusSettings) -> str:
    u = module_fraction(module)
    return "pretrain" if u < settings.pretrain else "cpt" if u < settings.pretrain + settings.cpt else "heldout"


def split(docs: list[Document], settings: CorpusSettings) -> dict[str, list[Document]]:
    parts = {part: [] for part in PARTS}
    for doc in docs:
        parts[part_of(doc.module, settings)].append(doc)
    for part, chosen in parts.items():
        if not chosen:
            raise MidusError(f"corpus part {part!r} is empty; change the split shares")
    return parts


# --- cache ---------------------------------------------------------------------------------------

def build_corpus(folder: Path, settings: CorpusSettings) -> Corpus:
    """Gather, clean and split into `folder` (written to a temporary sibling, renamed at the end)."""
    parts = split(documents(gather(), settings), settings)
    return write_corpus(folder, settings, parts, {"python": sys.version, "version": CORPUS_VERSION})


def write_corpus(folder: Path, settings, parts: dict[str, list[Document]], identity: dict) -> Corpus:
    """One JSON-lines file per part and the stats file (written last) into `folder`, atomically."""
    from ..checkpoint import atomic_dir

    corpus = Corpus(folder, settings, parts)
    with atomic_dir(folder) as tmp:
        for part, docs in parts.items():
            lines = (json.dumps(asdict(doc), ensure_ascii=False) + "\n" for doc in docs)
            (tmp / f"{part}.jsonl").write_text("".join(lines), encoding="utf-8")
        summary = {**identity, "settings": asdict(settings), "parts": corpus.stats(),
                   "sha256": content_hash(parts, tuple(parts))}
        (tmp / STATS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return corpus


def read_corpus(folder: Path, settings, names: tuple[str, ...] = PARTS) -> Corpus:
    parts = {}
    for part in names:
        lines = (folder / f"{part}.jsonl").read_text(encoding="utf-8").splitlines()
        parts[part] = [Document(**json.loads(line)) for line in lines]
    return Corpus(folder, settings, parts)


def content_hash(parts: dict[str, list[Document]], names: tuple[str, ...] = PARTS) -> str:
    digest = hashlib.sha256()
    for part in names:
        for doc in parts[part]:
            digest.update(f"{part}\0{doc.module}\0{doc.name}\0{doc.text}\0".encode())
    return digest.hexdigest()


def load_corpus(settings: CorpusSettings | None = None, cache_dir: str | Path | None = None) -> Corpus:
    """The embedded corpus, from its cache folder if it is complete, else built (and cached)."""
    settings = settings or CorpusSettings()
    folder = Path(cache_dir or cache_root()) / f"corpus-{settings.key()}"
    if (folder / STATS_FILE).is_file():
        return read_corpus(folder, settings)
    if folder.exists():  # not complete (no stats file is written before the rename): rebuild
        shutil.rmtree(folder)
    return build_corpus(folder, settings)
