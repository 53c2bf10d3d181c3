"""midus.load: a checkpoint folder and the recipe that grew it load as the same model; config-only
sources get seeded random weights only when allowed; names are checked before any slow work."""

import shutil

import pytest
import torch

from midus.errors import MidusError
from midus.growth import upscale_to_folder
from midus.load import check_model_name, is_recipe, load_model, read_recipe
from midus.parameters import count_parameters
from midus.recipe import RecipeError
from model_helpers import recipe, tokens


@pytest.fixture(scope="module")
def grown(tiny_base, tmp_path_factory):
    """(recipe YAML, the checkpoint folder it grows) for the tiny base grown by MIDUS."""
    root = tmp_path_factory.mktemp("load")
    grown_recipe = recipe(tiny_base, "midus")
    path = root / "midus.yaml"
    path.write_text(grown_recipe.to_yaml())
    return path, upscale_to_folder(grown_recipe, root / "grown")


@pytest.fixture
def config_only(tiny_base, tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(tiny_base / "config.json", folder / "config.json")  # shapes, no weights, no tokenizer
    return folder


def logits(loaded):
    with torch.no_grad():
        return loaded.model(tokens(seed=4)).logits


def test_a_recipe_loads_as_the_checkpoint_it_grows(tiny_base, grown):
    path, folder = grown
    from_folder, from_recipe = load_model(str(folder)), load_model(str(path))
    assert (from_folder.source, from_folder.weights) == ("folder", "loaded")
    assert (from_recipe.source, from_recipe.weights) == ("recipe", "loaded")
    assert from_folder.recipe == from_recipe.recipe == read_recipe(str(path))  # the folder keeps its recipe
    base_parameters = count_parameters(load_model(str(tiny_base)).model)
    assert from_folder.base_parameters == from_recipe.base_parameters == base_parameters
    assert from_folder.added_parameters == from_recipe.added_parameters > 0
    assert not from_folder.model.training and not from_recipe.model.training
    torch.testing.assert_close(logits(from_folder), logits(from_recipe), atol=0, rtol=0)
    text = "Return a new dictionary"
    assert from_folder.tokenizer(text).input_ids == from_recipe.tokenizer(text).input_ids


def test_a_plain_base_has_no_recipe(tiny_base):
    loaded = load_model(str(tiny_base), dtype="bfloat16")
    assert (loaded.source, loaded.weights, loaded.recipe, loaded.added_parameters) == ("folder", "loaded", None, None)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_an_unknown_dtype_is_refused(tiny_base):
    with pytest.raises(MidusError, match=r"^dtype 'int8': valid: float32, bfloat16, float16$"):
        load_model(str(tiny_base), dtype="int8")


def test_a_config_only_folder_needs_allow_random(config_only):
    with pytest.raises(MidusError, match=rf"^{config_only}: the folder has a config.json but no weights"):
        load_model(str(config_only))
    first, again = load_model(str(config_only), allow_random=True), load_model(str(config_only), allow_random=True)
    other = load_model(str(config_only), allow_random=True, seed=1)
    assert (first.weights, first.tokenizer) == ("random", None)
    torch.testing.assert_close(logits(first), logits(again), atol=0, rtol=0)  # seeded
    assert not torch.equal(logits(first), logits(other))


def test_a_recipe_on_a_config_only_base_grows_random_weights_when_allowed(grown, config_only):
    path, folder = grown
    with pytest.raises(MidusError, match="cannot load its weights"):
        load_model(str(path), base=str(config_only))
    loaded = load_model(str(path), base=str(config_only), allow_random=True)
    assert (loaded.source, loaded.weights, loaded.recipe.base) == ("recipe", "random", str(config_only))
    assert count_parameters(loaded.model) == count_parameters(load_model(str(folder)).model)  # real shapes
    assert torch.isfinite(logits(loaded)).all()


def test_read_recipe_swaps_the_base_and_keeps_the_rest(grown, config_only):
    path, _ = grown
    swapped = read_recipe(str(path), base=str(config_only))
    assert swapped == read_recipe(str(path)).model_copy(update={"base": str(config_only)})


def test_is_recipe_goes_by_the_suffix():
    assert is_recipe("runs/x.yaml") and is_recipe("x.yml") and not is_recipe("runs/model") and not is_recipe("org/name")


def test_check_model_name_returns_the_positions(tiny_base, grown):
    path, folder = grown
    assert check_model_name(str(tiny_base)) == check_model_name(str(folder)) == check_model_name(str(path)) == 512


def test_check_model_name_fails_fast_with_one_line(tiny_base, tmp_path):
    with pytest.raises(MidusError, match=rf"^{tmp_path / 'nowhere'}: no such folder$"):
        check_model_name(str(tmp_path / "nowhere"))
    with pytest.raises(RecipeError, match=rf"^recipe {tmp_path / 'none.yaml'}: no such file$"):
        check_model_name(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {tiny_base}\nmethod: midus\nnew_blocks: 0\n")
    with pytest.raises(RecipeError, match=rf"^{bad}: new_blocks: method 'midus' needs new_blocks >= 1$"):
        check_model_name(str(bad))
    missing_base = tmp_path / "missing-base.yaml"
    missing_base.write_text(f"base: {tmp_path / 'no-base'}\nmethod: llama-pro\nnew_blocks: 2\n")
    with pytest.raises(MidusError, match=rf"^{tmp_path / 'no-base'}: no such folder$"):
        check_model_name(str(missing_base))
