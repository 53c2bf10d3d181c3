"""Recipes: how to grow a base model. Validated YAML, saved next to every checkpoint it made.

Every field, its meaning and its range is in the schema below (`Recipe.model_json_schema()` gives it
as JSON Schema). Fields that need the base's depth L (placement indices, K < L, solar's m < L/2) are
checked against the base's config before any weight is read.
"""

import types
import typing
from pathlib import Path
from typing import Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UsageError
from .model.retrieval import MAX_SLOTS

METHODS = ("none", "solar", "llama-pro", "lesa", "pkm", "midus")
DUS_METHODS = ("none", "solar", "llama-pro", "lesa")
MEMORY_METHODS = ("pkm", "midus")
PLACEMENTS = ("distributed", "top-heavy", "bottom-heavy")
RECIPE_FILE = "midus_recipe.yaml"


class RecipeError(UsageError):
    """A recipe that cannot be used; the message is one line naming the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemorySettings(Strict):
    """The memory layers of `midus` (HML) and `pkm` blocks."""

    n_keys: int = Field(64, ge=2, strict=True, description="n: sub-keys per half; each head has n*n slots (n*n < 2^31)")
    topk: int = Field(32, ge=1, strict=True, description="k: slots retrieved per head and token (1 <= k <= n)")
    latent_dim: int = Field(64, ge=1, strict=True, description="r: width of the HIVE latent bank")
    values: Literal["hive", "per-head", "shared"] = Field(
        "hive", description="value realisation: hive (latent bank + per-head projections), per-head tables, one shared table")
    query_norm: Literal["none", "rms", "layer"] = Field("rms", description="parameter-free norm of each head's query")
    share_bank: bool = Field(False, description="midus only: one bank for all memory blocks, owned by the model")
    pkm_heads: int = Field(4, ge=1, strict=True, description="pkm only: heads of its query projection")
    pkm_key_dim: int = Field(128, ge=2, strict=True, description="pkm only: query/key width per head (even)")

    @model_validator(mode="after")
    def _sizes(self):
        if self.topk > self.n_keys:
            raise ValueError(f"topk={self.topk} exceeds n_keys={self.n_keys}: top-k is taken over n sub-keys")
        if self.n_keys**2 > MAX_SLOTS:
            raise ValueError(f"n_keys={self.n_keys} gives {self.n_keys**2} slots, more than the int32 slot index holds ({MAX_SLOTS})")
        if self.pkm_key_dim % 2:
            raise ValueError(f"pkm_key_dim={self.pkm_key_dim} must be even (it is split into two halves)")
        return self


class LesaSettings(Strict):
    """LESA's layer predictor, an MLP Linear-ReLU-Linear-ReLU-Linear (defaults: the paper's)."""

    hidden: int = Field(256, ge=1, strict=True, description="width of the predictor's hidden layers")
    epochs: int = Field(10, ge=1, strict=True, description="passes over the training rows of every weight kind")
    batch_size: int = Field(64, ge=1, strict=True, description="rows of V per optimizer step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    norm_weight: float = Field(5e-4, ge=0, le=1, description="lambda: loss = (1-lambda) MSE + lambda MSE of the norms")


class Recipe(Strict):
    """How to grow `base`: `method` adds `new_blocks` blocks at the `placement` positions."""

    base: str = Field(description="hub id or local folder of a Llama-family decoder (llama, mistral, qwen2, qwen3)")
    method: Literal["none", "solar", "llama-pro", "lesa", "pkm", "midus"] = Field(
        "midus", description="none: no growth (CPT-Base); solar: two overlapping copies; llama-pro: zeroed copies; "
                             "lesa: predicted layers; pkm: product-key memory FFN blocks; midus: memory blocks")
    new_blocks: int = Field(
        0, ge=0, strict=True,
        description="K: blocks added to the L of the base, 1 <= K < L (none: 0; solar: L - 2m, may be left 0 to follow m)")
    placement: Literal["distributed", "top-heavy", "bottom-heavy"] | list[int] = Field(
        "top-heavy", description="where new blocks go, each after a source block: distributed (after every (L/K)-th), "
                                 "top-heavy (after L-K-1 .. L-2), bottom-heavy (after 0 .. K-1), or a list of K source "
                                 "block indices in [0, L)")
    memory: MemorySettings | None = Field(None, description="memory methods only (pkm, midus); defaults filled in")
    solar_overlap: int | None = Field(
        None, ge=1, strict=True, description="solar only: m, blocks dropped at the seam, 1 <= m < L/2 (default L/4, or (L-K)/2)")
    lesa: LesaSettings | None = Field(None, description="lesa only: the layer predictor; defaults filled in")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="dtype of the grown checkpoint")
    seed: int = Field(0, strict=True, description="seeds every random choice (new tensors' init, LESA's training)")

    @field_validator("placement", mode="before")
    @classmethod
    def _placement(cls, value):
        if isinstance(value, str) and value not in PLACEMENTS:
            raise ValueError(f"got {value!r}; valid: {', '.join(PLACEMENTS)}, or a list of source block indices")
        return value

    @model_validator(mode="after")
    def _method_fields(self):
        if self.memory is not None and self.method not in MEMORY_METHODS:
            raise ValueError(f"memory: a memory section applies to {' and '.join(MEMORY_METHODS)} only, not to method {self.method!r}")
        if self.method in MEMORY_METHODS and self.memory is None:
            object.__setattr__(self, "memory", MemorySettings())
        if self.memory is not None and self.memory.share_bank and self.method != "midus":
            raise ValueError("memory.share_bank: applies to method 'midus' only")
        if self.solar_overlap is not None and self.method != "solar":
            raise ValueError(f"solar_overlap: applies to method 'solar' only, not to {self.method!r}")
        if self.lesa is not None and self.method != "lesa":
            raise ValueError(f"lesa: a lesa section applies to method 'lesa' only, not to {self.method!r}")
        if self.method == "lesa" and self.lesa is None:
            object.__setattr__(self, "lesa", LesaSettings())
        if self.method == "none" and self.new_blocks:
            raise ValueError("new_blocks: method 'none' adds no blocks: new_blocks must be 0")
        if self.method not in ("none", "solar") and self.new_blocks == 0:
            raise ValueError(f"new_blocks: method {self.method!r} needs new_blocks >= 1")
        if isinstance(self.placement, list) and self.method in ("none", "solar"):
            raise ValueError(f"placement: method {self.method!r} places no blocks; leave placement out")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe {path}: no such file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise RecipeError(f"recipe {path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise RecipeError(f"recipe {path}: expected a mapping of fields, got {type(data).__name__}")
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: dict, source: str = "recipe") -> "Recipe":
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise RecipeError(f"{source}: {describe_validation_error(error, cls)}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def describe_validation_error(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first problem of a pydantic error as one line: the field, what it got, what is allowed.
    With `model` (the validated class) the allowed values come from its schema."""
    if model is None:
        return _describe_plainly(error)
    errors = error.errors()
    first = errors[0]
    path, owner, info = _field_path(first["loc"], model)
    fields = {tuple(_field_path(e["loc"], model)[0]) for e in errors}
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    field = ".".join(path)
    if first["type"] == "value_error":  # our validators say what is wrong and what is allowed
        message = first["msg"].removeprefix("Value error, ")
        return f"{field}: {message}{more}" if field else f"{message}{more}"
    if first["type"] == "extra_forbidden":
        name = ".".join([*path, str(first["loc"][-1])])
        return f"{name}: unknown field; valid fields: {', '.join(owner.model_fields)}{more}"
    allowed = f"expected {expected(info.annotation, info.metadata)}" if info else first["msg"].lower()
    if first["type"] == "missing":
        return f"{field}: required; {allowed}{more}"
    # a union reports one error per branch; the branch errors at the field itself carry the whole value
    value = next((e["input"] for e in errors if tuple(e["loc"][: len(path)]) == tuple(path)
                  and len(e["loc"]) <= len(path) + 1), first["input"])
    return f"{field}: got {value!r}; {allowed}{more}"


def _describe_plainly(error: ValidationError) -> str:
    """Without the model: field and pydantic's message."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-after"))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    if first["type"] == "literal_error":
        message = f"got {first['input']!r}; {message.lower()}"
    count = error.error_count()
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"{field}: {message}{more}" if field else f"{message}{more}"


def _field_path(loc: tuple, model: type[BaseModel]) -> tuple[list[str], type[BaseModel] | None, object]:
    """Walk `loc` through the models' fields: the field names it passes (a union tag, a list index or
    an unknown name ends it), the model reached at its end, and the last field's FieldInfo."""
    path, owner, info = [], model, None
    for part in loc:
        if owner is None or not isinstance(part, str) or part not in owner.model_fields:
            break
        path.append(part)
        info = owner.model_fields[part]
        owner = next((a for a in _flat_args(info.annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return path, owner, info


def _flat_args(annotation) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _flat_args(arg)]
    return [annotation]


def expected(annotation, metadata=()) -> str:
    """What a field accepts, in words: `one of a, b`, `an integer >= 1`, `a number in [0, 1]`..."""
    bounds = []
    for constraint in metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(constraint, getattr(annotated_types, name.title())):
                bounds.append(f"{sign} {getattr(constraint, name)}")
    suffix = f" {' and '.join(bounds)}" if bounds else ""
    kinds = []
    for arg in _flat_args(annotation):
        if arg is type(None):
            continue
        if typing.get_origin(arg) is Literal:
            kinds.append(f"one of {', '.join(str(v) for v in typing.get_args(arg))}")
        elif arg is bool:
            kinds.append("true or false")
        elif arg is int:
            kinds.append(f"an integer{suffix}")
        elif arg is float:
            kinds.append(f"a number{suffix}")
        elif arg is str:
            kinds.append("a string")
        elif typing.get_origin(arg) is list:
            kinds.append(f"a list of {expected(typing.get_args(arg)[0]).removeprefix('an ').removeprefix('a ')}s")
        elif isinstance(arg, type) and issubclass(arg, BaseModel):
            kinds.append(f"a mapping with fields {', '.join(arg.model_fields)}")
        else:
            kinds.append(str(arg))
    return ", or ".join(kinds)
