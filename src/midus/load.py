"""Any model by name, for `midus eval`, `midus bench` and friends: a checkpoint folder, a hub id, or a
recipe grown on the fly. Where there are no weights (a config-only folder, a hub id whose weights are
not cached while offline, a recipe whose base cannot be downloaded) and the caller allows it, the
model is built at its real shapes on the meta device and then given seeded random weights."""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .checkpoint import DTYPES, check_weight_format, load_config, load_tokenizer, load_weights, resolve
from .errors import MidusError
from .parameters import count_parameters
from .recipe import RECIPE_FILE, Recipe

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


@dataclass
class LoadedModel:
    name: str  # as the user gave it
    model: PreTrainedModel
    tokenizer: object | None  # None where the source has none (a config-only folder)
    source: str  # folder | hub | recipe
    weights: str  # loaded | random
    recipe: Recipe | None  # the recipe that grew it, when known
    base_parameters: int | None  # parameters of the base it was grown from, when known

    @property
    def added_parameters(self) -> int | None:
        return None if self.base_parameters is None else count_parameters(self.model) - self.base_parameters


def is_recipe(name: str) -> bool:
    return Path(name).suffix in (".yaml", ".yml")


def read_recipe(name: str, base: str | None = None) -> Recipe:
    """The recipe YAML `name`, grown on `base` instead of its own base when given (e.g. a folder
    holding just the base's config.json, for a hub base that cannot be downloaded here)."""
    recipe = Recipe.from_yaml(name)
    return recipe if base is None else Recipe.parse({**recipe.model_dump(exclude_none=True), "base": base}, source=name)


def check_model_name(name: str, base: str | None = None) -> int:
    """Fail fast, before any slow work: a missing folder or recipe file, an invalid recipe, a config
    that cannot be had. Returns the model's positions (max_position_embeddings; 0 if it has none)."""
    source = read_recipe(name, base).base if is_recipe(name) else name
    config = load_config(source)  # growth keeps positions
    check_weight_format(resolve(source), name)
    return int(getattr(config, "max_position_embeddings", 0) or 0)


def load_model(name: str, *, dtype: str = "float32", device: str = "cpu", allow_random: bool = False,
               seed: int = 0, base: str | None = None) -> LoadedModel:
    """Load `name` (folder, hub id or recipe YAML; `base` overrides a recipe's base); `allow_random`
    permits random weights at real shapes."""
    if dtype not in DTYPES:
        raise MidusError(f"dtype {dtype!r}: valid: {', '.join(DTYPES)}")
    if is_recipe(name):
        loaded = _grow_recipe(name, read_recipe(name, base), dtype, allow_random, seed)
    else:
        loaded = _load_pretrained(name, dtype, allow_random, seed)
    loaded.model.to(device=device, dtype=DTYPES[dtype])
    loaded.model.eval()
    return loaded


def _load_pretrained(name: str, dtype: str, allow_random: bool, seed: int) -> LoadedModel:
    source = resolve(name)
    config = load_config(name)
    is_folder = Path(source).is_dir()
    recipe = _folder_recipe(source) if is_folder else None
    base_parameters = _parameters_of(recipe.base) if recipe else None
    has_weights = not is_folder or any(next(Path(source).glob(p), None) for p in WEIGHT_FILES)
    kind = "folder" if is_folder else "hub"
    if has_weights:
        try:
            model = load_weights(source, name, dtype=DTYPES[dtype])
            return LoadedModel(name, model, _tokenizer(source), kind, "loaded", recipe, base_parameters)
        except MidusError:
            if not allow_random or is_folder:
                raise
    elif not allow_random:
        raise MidusError(f"{name}: the folder has a config.json but no weights (*.safetensors or *.bin)")
    model = random_model(config, dtype, seed)
    return LoadedModel(name, model, _tokenizer(source), kind, "random", recipe, base_parameters)


def _grow_recipe(name: str, recipe: Recipe, dtype: str, allow_random: bool, seed: int) -> LoadedModel:
    from .growth import grow_on_meta, upscale

    config = load_config(recipe.base)
    base_parameters = _parameters_of(recipe.base, config)
    tokenizer = _tokenizer(resolve(recipe.base))
    try:
        return LoadedModel(name, upscale(recipe.base, recipe), tokenizer, "recipe", "loaded", recipe, base_parameters)
    except MidusError as error:
        if not allow_random or "cannot load its weights" not in str(error):
            raise
    grown = materialise(grow_on_meta(recipe, config), seed)  # real shapes, no base weights needed
    return LoadedModel(name, grown, tokenizer, "recipe", "random", recipe, base_parameters)


def random_model(config, dtype: str, seed: int) -> PreTrainedModel:
    """The architecture of `config` at its real shapes, with seeded random weights (its own init)."""
    from .growth import meta_base

    return materialise(meta_base(config, dtype), seed)


def materialise(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Allocate a meta-device model on the CPU and run the model's own weight init (seeded)."""
    model = model.to_empty(device="cpu")
    for tensor in (*model.parameters(), *model.buffers()):  # flags from meta growth would skip the init
        tensor.__dict__.pop("_is_hf_initialized", None)
    torch.manual_seed(seed)
    model.init_weights()
    return model


def _parameters_of(base: str, config=None) -> int | None:
    """Parameters of a base model from its config alone (meta device), or None if it is unreachable."""
    try:
        from .growth import meta_base

        return count_parameters(meta_base(config or load_config(base)))
    except MidusError:
        return None


def _folder_recipe(folder: str) -> Recipe | None:
    try:
        return Recipe.from_yaml(Path(folder) / RECIPE_FILE)
    except MidusError:  # none, or unreadable: the model still loads, its added parameters are unknown
        return None


def _tokenizer(source: str):
    try:
        return load_tokenizer(source)
    except MidusError:  # a config-only folder: the model still loads, without a tokenizer
        return None


def max_positions(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 0)


__all__ = ["LoadedModel", "check_model_name", "is_recipe", "load_model", "materialise", "max_positions", "random_model",
           "read_recipe"]
