"""Recipes: how to grow a base model. Validated YAML, saved next to every checkpoint it made.

`Recipe` holds the fields every method has; each method's recipe is a subclass of it with its own
section and rules, in the method's file (`growth/<method>.py`, named by `register(recipe=...)`).
`Recipe.parse` and `Recipe.from_yaml` give the one `method` names (a discriminated union; midus when
absent). Every field, its meaning and its range is in the schemas (`Recipe.model_json_schema()` gives
them as JSON Schema). Fields that need the base's depth L (placement indices, K < L, solar's m < L/2)
are checked against the base's config before any weight is read.
"""

from functools import cache
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_serializer, model_validator

from .checkpoint import DtypeName
from .errors import UsageError
from .model.configuration_midus import MEMORY_DEFAULTS, MIN_SIZES, QUERY_NORMS, VALUE_KINDS, ZERO_INITS, check_memory
from .schema import Strict, YamlModel, describe_validation_error

METHODS = ("none", "solar", "llama-pro", "lesa", "pkm", "midus")
PLACEMENTS = ("distributed", "top-heavy", "bottom-heavy")
RECIPE_FILE = "midus_recipe.yaml"


class RecipeError(UsageError):
    """A recipe that cannot be used; the message is one line naming the problem."""


class MemorySettings(Strict):
    """The memory layers of `midus` (HML) and `pkm` blocks. Defaults and checks are the model config's
    (`midus.model.configuration_midus`), so a recipe and a hand-edited config.json are held to the same rules."""

    n_keys: int = Field(MEMORY_DEFAULTS["n_keys"], ge=MIN_SIZES["n_keys"], strict=True,
                        description="n: sub-keys per half; each head has n*n slots (n*n < 2^31)")
    topk: int = Field(MEMORY_DEFAULTS["topk"], ge=MIN_SIZES["topk"], strict=True,
                      description="k: slots retrieved per head and token (1 <= k <= n)")
    latent_dim: int = Field(MEMORY_DEFAULTS["latent_dim"], ge=MIN_SIZES["latent_dim"], strict=True,
                            description="r: width of the HIVE latent bank")
    values: Literal[VALUE_KINDS] = Field(
        MEMORY_DEFAULTS["values"],
        description="value realisation: hive (latent bank + per-head projections), per-head tables, one shared table")
    query_norm: Literal[QUERY_NORMS] = Field(MEMORY_DEFAULTS["query_norm"],
                                             description="parameter-free norm of each head's query")
    share_bank: bool = Field(MEMORY_DEFAULTS["share_bank"],
                             description="midus only: one bank for all memory blocks, owned by the model")
    zero_init: Literal[ZERO_INITS] = Field(
        MEMORY_DEFAULTS["zero_init"],
        description="the tensor that starts at zero: proj (HIVE's P; identity at insertion), bank (the latent bank U, "
                    "P random; identity too), none (both random: not the identity)")
    pkm_heads: int = Field(MEMORY_DEFAULTS["pkm_heads"], ge=MIN_SIZES["pkm_heads"], strict=True,
                           description="pkm only: heads of its query projection")
    pkm_key_dim: int = Field(MEMORY_DEFAULTS["pkm_key_dim"], ge=MIN_SIZES["pkm_key_dim"], strict=True,
                             description="pkm only: query/key width per head (even)")

    @model_validator(mode="after")
    def _sizes(self):
        check_memory(self.model_dump())
        return self


class Recipe(YamlModel):
    """How to grow `base`: `method` adds `new_blocks` blocks at the `placement` positions."""

    kind: ClassVar[str] = "recipe"
    error: ClassVar[type[UsageError]] = RecipeError
    places_blocks: ClassVar[bool] = True  # False for a method that puts no blocks at `placement` (none, solar)

    base: str = Field(description="hub id or local folder of a Llama-family decoder (llama, mistral, qwen2, qwen3)")
    method: Literal[METHODS] = Field(
        "midus", description="none: no growth (CPT-Base); solar: two overlapping copies; llama-pro: zeroed copies; "
                             "lesa: predicted layers; pkm: product-key memory FFN blocks; midus: memory blocks")
    new_blocks: int = Field(
        0, ge=0, strict=True,
        description="K: blocks added to the L of the base, 1 <= K < L (none: 0; solar: L - 2m, may be left 0 to follow m)")
    placement: Literal[PLACEMENTS] | list[int] = Field(
        "top-heavy", description="where new blocks go, each after a source block: distributed (after every (L/K)-th), "
                                 "top-heavy (after L-K-1 .. L-2), bottom-heavy (after 0 .. K-1), or a list of K source "
                                 "block indices in [0, L)")
    dtype: DtypeName = Field("bfloat16", description="dtype of the grown checkpoint")
    seed: int = Field(0, strict=True, description="seeds every random choice (new tensors' init, LESA's training)")

    @field_validator("placement", mode="before")
    @classmethod
    def _placement(cls, value):
        if isinstance(value, str) and value not in PLACEMENTS:
            raise ValueError(f"got {value!r}; valid: {', '.join(PLACEMENTS)}, or a list of source block indices")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sections_of_other_methods(cls, data):
        """A field that only other methods' recipes declare (memory for llama-pro): name those methods."""
        for name in data if isinstance(data, dict) else ():
            if name in cls.model_fields:
                continue
            owners = [method for method, recipe in recipe_classes().items() if name in recipe.model_fields]
            if owners:
                raise ValueError(f"{name}: applies to {' and '.join(owners)} only, not to method {data.get('method')!r}")
        return data

    @model_validator(mode="after")
    def _blocks(self):
        if self.places_blocks and self.new_blocks == 0:
            raise ValueError(f"new_blocks: method {self.method!r} needs new_blocks >= 1")
        if not self.places_blocks and isinstance(self.placement, list):
            raise ValueError(f"placement: method {self.method!r} places no blocks; leave placement out")
        return self

    @model_serializer(mode="wrap")
    def _dtype_and_seed_last(self, handler):
        """A method's own section comes before dtype and seed, where recipe files have it."""
        fields = handler(self)
        last = {name: fields.pop(name) for name in ("dtype", "seed") if name in fields}
        return fields | last

    @classmethod
    def parse(cls, data: dict, source: str | None = None) -> "Recipe":
        """The recipe of the class `data`'s method declares (midus where it names none)."""
        if cls is not Recipe:  # a method's own class
            return super().parse(data, source)
        try:
            return recipe_union().validate_python({"method": "midus", **data})
        except ValidationError as error:
            raise RecipeError(f"{source or cls.kind}: {describe_validation_error(error, recipe_classes())}") from None

    @classmethod
    def model_json_schema(cls, *args, **kwargs) -> dict:
        """Every method's recipe (a union on `method`) for `Recipe`; a method's own for its class."""
        return recipe_union().json_schema(*args, **kwargs) if cls is Recipe else super().model_json_schema(*args, **kwargs)


@cache
def recipe_classes() -> dict[str, type[Recipe]]:
    """Each method's recipe class, in the order of METHODS."""
    from .growth.registry import METHODS as REGISTERED  # here, not at the top: growth imports this module

    return {name: REGISTERED[name].recipe for name in METHODS}


@cache
def recipe_union() -> TypeAdapter:
    return TypeAdapter(Annotated[Union[tuple(recipe_classes().values())], Field(discriminator="method")])
