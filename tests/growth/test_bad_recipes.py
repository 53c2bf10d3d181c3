"""Every bad input of a recipe: one line naming the field and the allowed values, exit 2, no output."""

import pytest
import yaml

from cli_helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("fields, fragments", [
    ({"method": "dense"}, ["method: got 'dense'", "none, solar, llama-pro, lesa, pkm, midus"]),
    ({"placement": "middle"}, ["placement: got 'middle'", "distributed, top-heavy, bottom-heavy"]),
    ({"placement": [1, "a"]}, ["placement: got [1, 'a']", "distributed, top-heavy, bottom-heavy", "list of integers"]),
    ({"placement": 3}, ["placement: got 3", "list of integers"]),
    ({"new_blocks": 4}, ["new_blocks=4 must be between 1 and 3", "4 blocks"]),  # K >= L
    ({"new_blocks": 9}, ["new_blocks=9 must be between 1 and 3"]),
    ({"placement": [0, 4]}, ["placement: source blocks [4] out of range", "0..3"]),
    ({"placement": [-1, 2]}, ["out of range"]),
    ({"placement": [1]}, ["lists 1 source blocks but new_blocks is 2"]),
    ({"placement": [0, 1, 2, 3], "new_blocks": 4}, ["new_blocks=4 must be between 1 and 3"]),
    ({"method": "llama-pro", "memory": {"n_keys": 64}}, ["memory:", "pkm and midus only", "llama-pro"]),
    ({"method": "solar", "new_blocks": 0, "memory": {}}, ["memory:", "pkm and midus only"]),
    ({"method": "solar", "new_blocks": 0, "solar_overlap": 2}, ["solar_overlap=2", "m < L/2"]),
    ({"method": "solar", "new_blocks": 0, "solar_overlap": 5}, ["solar_overlap=5", "m < L/2"]),
    ({"method": "solar", "new_blocks": 3}, ["new_blocks=3", "solar adds L - 2m"]),
    ({"new_blocks": "two"}, ["new_blocks: got 'two'", "an integer >= 0"]),
    ({"new_blocks": 1.5}, ["new_blocks: got 1.5", "an integer >= 0"]),
    ({"dtype": "fp8"}, ["dtype: got 'fp8'", "float32, bfloat16, float16"]),
    ({"seed": "zero"}, ["seed: got 'zero'", "an integer"]),
    ({"memory": {"n_keys": "many"}}, ["memory.n_keys: got 'many'", "an integer >= 2"]),
    ({"memory": {"share_bank": "maybe"}}, ["memory.share_bank: got 'maybe'", "true or false"]),
    ({"memory": {"bank": 3}}, ["memory.bank: unknown field", "n_keys"]),
    ({"memory": 5}, ["memory: got 5", "a mapping with fields"]),
    ({"blocks": 2}, ["blocks: unknown field", "valid fields: base, method, new_blocks"]),
    ({"method": "lesa", "lesa": {"lr": "fast"}}, ["lesa.lr: got 'fast'", "a number > 0"]),
    ({"method": "none"}, ["new_blocks: method 'none' adds no blocks"]),
    ({"method": "lesa", "new_blocks": 0}, ["new_blocks: method 'lesa' needs new_blocks >= 1"]),
])
def test_bad_recipe(tiny_base, tmp_path, fields, fragments):
    recipe = {"base": str(tiny_base), "method": "midus", "new_blocks": 2, "dtype": "float32", **fields}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    result = run_cli("upscale", path, out)
    assert_one_line_error(result, *fragments, code=2)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"], "nothing half-written"


def test_unsupported_family_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base": str(tmp_path / "gpt2"), "method": "llama-pro", "new_blocks": 1}))
    result = run_cli("upscale", path, tmp_path / "out")
    assert result.exit_code != 0 and not (tmp_path / "out").exists()
    assert "'gpt2' is not a supported decoder" in result.stderr and "llama, mistral, qwen2, qwen3" in result.stderr
