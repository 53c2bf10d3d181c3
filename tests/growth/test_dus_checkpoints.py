"""DUS methods write plain checkpoints of the base's class: no custom code, provenance in the config."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner
from transformers import LlamaForCausalLM

from model_helpers import METHOD_FIELDS, tokens
from midus.cli import app
from midus.parameters import new_block_parameter_names, new_layer_indices


@pytest.mark.parametrize("method", ["none", "solar", "llama-pro", "lesa"])
def test_dus_output_loads_as_plain_llama(tiny_base, tmp_path, method):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"base": str(tiny_base), "method": method, "dtype": "float32", **METHOD_FIELDS[method]}))
    out = tmp_path / "grown"
    result = CliRunner().invoke(app, ["upscale", str(recipe), str(out)])
    assert result.exit_code == 0, result.output
    assert not list(out.glob("*.py")), "no custom code"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
    model = LlamaForCausalLM.from_pretrained(out)  # no trust_remote_code
    assert model.config.num_hidden_layers == len(model.config.layer_map) == (4 if method == "none" else 6)
    new = new_layer_indices(model.config)
    assert len(new) == (0 if method == "none" else 2)
    assert {n.split(".")[2] for n in new_block_parameter_names(model)} == {str(i) for i in new}
    with torch.no_grad():
        assert torch.isfinite(model(tokens(vocab=model.config.vocab_size)).logits).all()
    card = (out / "README.md").read_text()
    assert method in card and "added parameters" in card
    assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()
