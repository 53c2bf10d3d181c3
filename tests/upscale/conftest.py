import pytest
from transformers import AutoTokenizer

from growing import FAMILIES, write_family_base


@pytest.fixture(scope="session")
def family_bases(tiny_base, tmp_path_factory):
    """{family: folder} for qwen2, qwen3 and mistral tiny bases (4 blocks, d 64)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    root = tmp_path_factory.mktemp("family-bases")
    return {family: write_family_base(root / family, family, tokenizer) for family in FAMILIES}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight the other test processes for cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
