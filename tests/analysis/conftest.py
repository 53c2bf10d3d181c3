import json

import pytest
from analysis_helpers import heldout_text
from model_helpers import grow, random_memory
from transformers import AutoTokenizer

from midus.checkpoint import save_model


@pytest.fixture
def grown(tiny_base):
    """A tiny MIDUS model (4 + 2 blocks: D D M* D M* D) whose memory matters."""
    return random_memory(grow(tiny_base), scale=0.3)


@pytest.fixture(scope="session")
def heldout_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    text = heldout_text()
    (folder / "heldout.txt").write_text(text)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    (folder / "heldout.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in paragraphs))
    (folder / "empty.txt").write_text("")
    return folder


@pytest.fixture(scope="session")
def midus_folder(tiny_base, tmp_path_factory):
    """A tiny MIDUS checkpoint on disk, with random projections."""
    folder = tmp_path_factory.mktemp("midus") / "grown"
    save_model(random_memory(grow(tiny_base), scale=0.3), AutoTokenizer.from_pretrained(tiny_base), folder)
    return folder

