"""Recipes: how to grow a base model. Validated YAML, saved next to every checkpoint it made.

Every field, its meaning and its range is in the schema below (`Recipe.model_json_schema()` gives it
as JSON Schema). Fields that need the base's depth L (placement indices, K < L, solar's m < L/2) are
checked against the base's config before any weight is read.
"""

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .errors import UsageError
from .model.configuration_midus import MEMORY_DEFAULTS, MIN_SIZES, QUERY_NORMS, VALUE_KINDS, ZERO_INITS, check_memory
from .schema import Strict, YamlModel

METHODS = ("none", "solar", "llama-pro", "lesa", "pkm", "midus")
MEMORY_METHODS = ("pkm", "midus")
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


class LesaSettings(Strict):
    """LESA's layer predictor, an MLP Linear-ReLU-Linear-ReLU-Linear (defaults: the paper's)."""

    hidden: int = Field(256, ge=1, strict=True, description="width of the predictor's hidden layers")
    epochs: int = Field(10, ge=1, strict=True, description="passes over the training rows of every weight kind")
    batch_size: int = Field(64, ge=1, strict=True, description="rows of V per optimizer step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    norm_weight: float = Field(5e-4, ge=0, le=1, description="lambda: loss = (1-lambda) MSE + lambda MSE of the norms")
    norms_from: Literal["block-0", "source"] = Field(
        "block-0", description="where a new layer's tensors that are not predicted (RMSNorm weights, biases) come from: "
                               "block-0 (the authors' code builds every new layer from a copy of block 0) or source "
                               "(the block it is inserted after)")


class Recipe(YamlModel):
    """How to grow `base`: `method` adds `new_blocks` blocks at the `placement` positions."""

    kind: ClassVar[str] = "recipe"
    error: ClassVar[type[UsageError]] = RecipeError

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
