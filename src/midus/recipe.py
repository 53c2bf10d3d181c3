"""Recipes: how to grow a base model. Validated YAML, saved next to every checkpoint it made."""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UsageError
from .model.retrieval import MAX_SLOTS

METHODS = ("none", "solar", "llama-pro", "lesa", "pkm", "midus")
MEMORY_METHODS = ("pkm", "midus")
PLACEMENTS = ("distributed", "top-heavy", "bottom-heavy")
RECIPE_FILE = "midus_recipe.yaml"


class RecipeError(UsageError):
    """A recipe that cannot be used; the message is one line naming the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemorySettings(Strict):
    """The memory layers of `midus` (HML) and `pkm` blocks."""

    n_keys: int = Field(64, ge=2, description="n: sub-keys per half; each head has n*n slots")
    topk: int = Field(32, ge=1, description="k: slots retrieved per head and token (k <= n)")
    latent_dim: int = Field(64, ge=1, description="r: width of the HIVE latent bank")
    values: Literal["hive", "per-head", "shared"] = Field("hive", description="value realisation")
    query_norm: Literal["none", "rms", "layer"] = Field("rms", description="parameter-free norm of each head's query")
    share_bank: bool = Field(False, description="one bank for all memory blocks, owned by the model")
    pkm_heads: int = Field(4, ge=1, description="pkm only: heads of its query projection")
    pkm_key_dim: int = Field(128, ge=2, description="pkm only: query/key width per head (even)")

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
    """LESA's layer predictor (defaults: the paper's)."""

    hidden: int = Field(256, ge=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    norm_weight: float = Field(5e-4, ge=0, le=1, description="lambda: weight of the norm-matching loss")


class Recipe(Strict):
    """How to grow `base`: `method` adds `new_blocks` blocks at the `placement` positions."""

    base: str = Field(description="hub id or local folder of a Llama-family decoder")
    method: Literal["none", "solar", "llama-pro", "lesa", "pkm", "midus"] = "midus"
    new_blocks: int = Field(0, ge=0, description="K: blocks added to the L of the base")
    placement: Literal["distributed", "top-heavy", "bottom-heavy"] | list[int] = Field(
        "top-heavy", description="policy, or explicit source blocks (each new block goes after its source)")
    memory: MemorySettings | None = Field(None, description="memory methods only (pkm, midus)")
    solar_overlap: int | None = Field(None, ge=1, description="solar only: m, blocks dropped at the seam (default L/4)")
    lesa: LesaSettings | None = Field(None, description="lesa only")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    seed: int = 0

    @field_validator("placement", mode="before")
    @classmethod
    def _placement(cls, value):
        if isinstance(value, str) and value not in PLACEMENTS:
            raise ValueError(f"got {value!r}; valid: {', '.join(PLACEMENTS)}, or a list of source block indices")
        return value

    @model_validator(mode="after")
    def _method_fields(self):
        if self.memory is not None and self.method not in MEMORY_METHODS:
            raise ValueError(f"a memory: section applies to {' and '.join(MEMORY_METHODS)} only, not to method {self.method!r}")
        if self.method in MEMORY_METHODS and self.memory is None:
            object.__setattr__(self, "memory", MemorySettings())
        if self.memory is not None and self.memory.share_bank and self.method != "midus":
            raise ValueError("memory.share_bank applies to method 'midus' only")
        if self.solar_overlap is not None and self.method != "solar":
            raise ValueError(f"solar_overlap applies to method 'solar' only, not to {self.method!r}")
        if self.lesa is not None and self.method != "lesa":
            raise ValueError(f"a lesa: section applies to method 'lesa' only, not to {self.method!r}")
        if self.method == "lesa" and self.lesa is None:
            object.__setattr__(self, "lesa", LesaSettings())
        if self.method == "none" and self.new_blocks:
            raise ValueError("method 'none' adds no blocks: new_blocks must be 0")
        if self.method not in ("none", "solar") and self.new_blocks == 0:
            raise ValueError(f"method {self.method!r} needs new_blocks >= 1")
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
            raise RecipeError(f"{source}: {describe_validation_error(error)}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as one line: field, what is wrong, what is allowed."""
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
