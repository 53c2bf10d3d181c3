"""benchmarks/memory_block_versions.py: the committed table is its JSON's; a revision's model folder
imports as its own package; an unknown revision is a one-line error."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("memory_block_versions", BENCHMARKS / "memory_block_versions.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))  # as when run: it takes turns through memory_cost's `interleaved`
        spec.loader.exec_module(module)
    return module


def test_the_committed_table_is_the_one_its_json_gives(script):
    results = json.loads((BENCHMARKS / "results" / "memory_block_versions.json").read_text())
    assert script.markdown(results) == (BENCHMARKS / "results" / "memory_block_versions.md").read_text()
    assert {(r["width"], r["threads"], r["phase"]) for r in results["rows"]} == {
        (w, t, p) for w in ("smol", "1b") for t in (1, 2) for p in script.ROUNDS}


def test_a_revision_imports_as_its_own_package_with_the_same_outputs(script, tmp_path):
    import torch

    old = script.import_revision("HEAD", tmp_path)
    assert old.__name__ == "midus_model_HEAD" and Path(old.__file__).parent == tmp_path / "midus_model_HEAD"
    script.WIDTHS["tiny"] = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    try:
        blocks, _ = script.blocks_of("tiny", old)
    finally:
        del script.WIDTHS["tiny"]
    assert type(blocks["old"]).__module__.startswith("midus_model_HEAD")
    x = torch.randn(1, 5, 64)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(blocks["full"].self_attn.config)(x, torch.arange(5)[None])
    with torch.no_grad():
        torch.testing.assert_close(blocks["old"](x, attention_mask=None, position_embeddings=rope),
                                   blocks["new"](x, attention_mask=None, position_embeddings=rope))


def test_an_unknown_revision_is_a_one_line_error(script, tmp_path):
    with pytest.raises(SystemExit, match="error: no model folder at revision 'no-such-revision'"):
        script.import_revision("no-such-revision", tmp_path)
