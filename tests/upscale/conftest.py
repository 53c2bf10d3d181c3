import pytest
from transformers import AutoTokenizer

from growing import FAMILIES, write_family_base


@pytest.fixture(scope="session")
def family_bases(tiny_base, tmp_path_factory):
    """{family: folder} for qwen2, qwen3 and mistral tiny bases (4 blocks, d 64)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    root = tmp_path_factory.mktemp("family-bases")
    return {family: write_family_base(root / family, family, tokenizer) for family in FAMILIES}
