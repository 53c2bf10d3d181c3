"""`midus upscale` end to end, and every bad input: one line, non-zero exit, nothing written."""

import json

import pytest
import yaml
from transformers import AutoModelForCausalLM

from midus.recipe import RECIPE_FILE
from cli_helpers import assert_one_line_error, run_cli as run
from model_helpers import TINY_MEMORY


def write_recipe(tmp_path, **fields):
    recipe = {"method": "midus", "new_blocks": 2, "dtype": "float32", "memory": TINY_MEMORY, **fields}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_upscale_writes_a_complete_checkpoint(tiny_base, tmp_path):
    out = tmp_path / "grown"
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base)), out)
    assert result.exit_code == 0, result.output
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", RECIPE_FILE, "README.md",
            "modeling_midus.py", "configuration_midus.py"} <= files
    assert any(name.endswith(".safetensors") for name in files)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and len(config["layer_map"]) == 6
    card = (out / "README.md").read_text()
    for fact in (str(tiny_base), "midus", "top-heavy", "added parameters"):
        assert fact in card
    assert yaml.safe_load((out / RECIPE_FILE).read_text())["method"] == "midus"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".grown.tmp")]


def test_set_overrides_recipe_fields_and_the_saved_recipe_says_so(tiny_base, tmp_path):
    out = tmp_path / "grown"
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base)), out,
                 "--set", "new_blocks=1", "--set", "memory.topk=2")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    saved = yaml.safe_load((out / RECIPE_FILE).read_text())
    assert saved["new_blocks"] == 1 and saved["memory"]["topk"] == 2


def test_a_bad_override_is_one_line_and_writes_nothing(tiny_base, tmp_path):
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base)), tmp_path / "out", "--set", "new_blocks=-1")
    assert_one_line_error(result, "new_blocks: got -1", code=2)
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base)), tmp_path / "out", "--set", "new_blocks")
    assert_one_line_error(result, "expected KEY=VALUE", code=2)
    assert not (tmp_path / "out").exists()

def test_existing_non_empty_out_dir_is_refused(tiny_base, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base)), out)
    assert_one_line_error(result, "not empty", code=2)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("memory, fragment", [
    ({"n_keys": 4, "topk": 8}, "topk=8 exceeds n_keys=4"),
    ({"n_keys": 50000}, "int32 slot index"),
    ({"values": "dense"}, "hive"),
])
def test_impossible_memory_sizes(tiny_base, tmp_path, memory, fragment):
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base), memory=memory), tmp_path / "out")
    assert_one_line_error(result, fragment, code=2)
    assert not (tmp_path / "out").exists()


def test_odd_head_size_is_refused(tiny_base, tmp_path):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(tiny_base, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "hidden_size": 60, "head_dim": 15}))
    result = run("upscale", write_recipe(tmp_path, base=str(odd)), tmp_path / "out")
    assert_one_line_error(result, "head_dim", "15", "even")  # transformers' own check, or ours where it has none
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupt_bases(tmp_path):
    result = run("upscale", write_recipe(tmp_path, base=str(tmp_path / "nowhere")), tmp_path / "out")
    assert_one_line_error(result, "no such folder")

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("upscale", write_recipe(tmp_path, base=str(empty)), tmp_path / "out")
    assert_one_line_error(result, "no config.json")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    result = run("upscale", write_recipe(tmp_path, base=str(corrupt)), tmp_path / "out")
    assert_one_line_error(result, "config.json is unreadable")
    assert not (tmp_path / "out").exists()


def test_corrupt_weights_are_refused(tiny_base, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    result = run("upscale", write_recipe(tmp_path, base=str(broken)), tmp_path / "out")
    assert_one_line_error(result, "cannot load its weights")
    assert not (tmp_path / "out").exists()


def test_non_llama_base_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(folder)
    result = run("upscale", write_recipe(tmp_path, base=str(folder)), tmp_path / "out")
    assert_one_line_error(result, "'gpt2' is not a supported decoder", "llama")


def test_hub_id_goes_to_the_hub(tmp_path, monkeypatch):
    """A hub id takes the real download path; offline, that ends in a one-line error naming it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    import transformers

    real = transformers.AutoConfig.from_pretrained

    def spy(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    result = run("upscale", write_recipe(tmp_path, base="meta-llama/Llama-3.2-1B"), tmp_path / "out")
    assert calls == ["meta-llama/Llama-3.2-1B"]
    assert_one_line_error(result, "meta-llama/Llama-3.2-1B", "hub could not provide it")
    assert not (tmp_path / "out").exists()


def test_recipe_errors_name_the_field(tiny_base, tmp_path):
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base), placement="middle"), tmp_path / "out")
    assert_one_line_error(result, "placement", "distributed, top-heavy, bottom-heavy", code=2)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("base: [unclosed")
    assert_one_line_error(run("upscale", bad_yaml, tmp_path / "out"), "not valid YAML", code=2)
    assert_one_line_error(run("upscale", tmp_path / "none.yaml", tmp_path / "out"), "no such file", code=2)


def test_failure_while_saving_leaves_nothing(tiny_base, tmp_path, monkeypatch):
    from midus.growth import build

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):  # the failure itself, not one made of it
        build.upscale_to_folder(
            build.Recipe.parse({"base": str(tiny_base), "new_blocks": 2, "memory": TINY_MEMORY}),
            tmp_path / "out",
        )
    assert list(tmp_path.iterdir()) == []


def test_grown_checkpoint_loads_with_auto_class(tiny_base, tmp_path):
    out = tmp_path / "grown"
    assert run("upscale", write_recipe(tmp_path, base=str(tiny_base), placement="distributed"), out).exit_code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "MidusForCausalLM"
    assert [e["kind"] for e in model.config.layer_map] == ["decoder", "decoder", "memory", "decoder", "decoder", "memory"]


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_folder(tiny_base, tmp_path, monkeypatch):
    import errno
    import os

    import transformers.modeling_utils as modeling_utils

    def full_disk(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as file:
            file.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    out = tmp_path / "new" / "grown"  # its parent is made for it, and removed with it
    result = run("upscale", write_recipe(tmp_path, base=str(tiny_base)), out)
    assert_one_line_error(result, "model.safetensors: No space left on device; nothing was written to " + str(out),
                          code=1, other_lines=True)  # after the progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_a_recipe_that_is_not_text_is_one_line(tmp_path):
    recipe = tmp_path / "model.yaml"
    recipe.write_bytes(bytes(range(128, 256)) * 4)  # a binary file passed by mistake
    assert_one_line_error(run("upscale", recipe, tmp_path / "out"), f"recipe {recipe}: not a text file", code=2)
    assert_one_line_error(run("train", recipe), f"config {recipe}: not a text file", code=2)
    assert_one_line_error(run("inspect", recipe), f"recipe {recipe}: not a text file", code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.yaml"]


def test_make_base_leaves_nothing_when_a_write_fails(tmp_path, monkeypatch):
    import errno
    import os

    import transformers.modeling_utils as modeling_utils

    def full_disk(tensors, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    assert_one_line_error(run("make-base", tmp_path / "base"), "No space left on device", code=1, other_lines=True)
    assert list(tmp_path.iterdir()) == []
