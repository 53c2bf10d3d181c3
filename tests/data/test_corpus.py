import json

import pytest

from midus.data import corpus
from midus.data.corpus import PARTS, CorpusSettings, clean, documents, load_corpus, part_of, split
from midus.data.docstrings import public
from midus.errors import MidusError


@pytest.fixture(scope="module")
def rows():
    return corpus.gather()


def test_gather_is_deterministic_and_skips_private_test_and_acting_modules(rows):
    assert rows == corpus.gather()
    modules = {module for module, _, _ in rows}
    assert {"collections", "json", "os", "email.mime.text"} <= modules
    assert not [m for m in modules if not public(m)]
    assert not modules & {"antigravity", "this", "turtle", "tkinter", "idlelib"}
    assert not [m for m in modules if m.split(".")[0] == "test" or "__main__" in m]


def test_public_module_names():
    assert public("json") and public("email.mime.text")
    assert not public("_io") and not public("json.__main__") and not public("unittest.test.test_case")
    assert not public("antigravity") and not public("idlelib.editor")


def test_clean_dedents_strips_and_collapses_blank_lines():
    raw = "Summary line.\n\n        Indented body\n          more   \n\n\n\n        end.  \n    "
    assert clean(raw) == "Summary line.\n\nIndented body\n  more\n\nend."


def test_documents_drop_tiny_and_duplicate_docs():
    settings = CorpusSettings(min_chars=20, min_words=4)
    long = "Return the thing that the caller asked for, politely."
    rows = [("a", "a.f", "    " + long), ("b", "b.g", long), ("a", "a.h", "Too short."), ("c", "c.k", "one two three four five six seven")]
    docs = documents(rows, settings)
    assert [(d.module, d.name, d.text) for d in docs] == [("a", "a.f", long), ("c", "c.k", "one two three four five six seven")]


def test_split_is_by_module_and_stable():
    settings = CorpusSettings()
    docs = documents([(f"mod{i}", f"mod{i}.f{j}", f"Document {j} of module {i}, long enough to keep it around.")
                      for i in range(60) for j in range(3)], settings)
    parts = split(docs, settings)
    owners = {part: {d.module for d in chosen} for part, chosen in parts.items()}
    assert set(owners) == set(PARTS) and all(owners.values())
    assert not (owners["pretrain"] & owners["cpt"]) and not (owners["pretrain"] & owners["heldout"]) \
        and not (owners["cpt"] & owners["heldout"])
    assert sum(len(chosen) for chosen in parts.values()) == len(docs)
    assert part_of("json", settings) == part_of("json", CorpusSettings())  # a pure function of the name


def test_bad_split_shares():
    with pytest.raises(MidusError, match="sum below 1"):
        CorpusSettings(pretrain=0.7, cpt=0.4)


def test_load_corpus_builds_once_then_reads_the_cache(tmp_path, monkeypatch, rows):
    monkeypatch.setattr(corpus, "gather", lambda: rows)
    built = load_corpus(cache_dir=tmp_path)
    stats = json.loads((built.folder / corpus.STATS_FILE).read_text())
    assert stats["parts"] == built.stats() and stats["sha256"] == corpus.content_hash(built.parts)
    for part in PARTS:
        assert stats["parts"][part]["characters"] > 10_000
        lines = built.file(part).read_text().splitlines()
        assert len(lines) == len(built.parts[part]) and set(json.loads(lines[0])) == {"text", "module", "name"}

    def no_gathering():
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(corpus, "gather", no_gathering)
    again = load_corpus(cache_dir=tmp_path)
    assert again.parts == built.parts and again.folder == built.folder
    modules = [{d.module for d in again.parts[p]} for p in PARTS]
    assert not (modules[0] & modules[1] or modules[0] & modules[2] or modules[1] & modules[2])
