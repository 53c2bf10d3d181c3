"""MidusConfig: a LlamaConfig whose layers may be memory blocks."""

import dataclasses

import transformers
from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from .compat import TESTED_TRANSFORMERS
from .retrieval import MAX_SLOTS

if not dataclasses.is_dataclass(LlamaConfig):  # configs became dataclasses in transformers 5.x
    raise ImportError(f"transformers {transformers.__version__} is too old for this MIDUS checkpoint: its configs are "
                      f"not dataclasses (tested with transformers {' to '.join(TESTED_TRANSFORMERS)})")

LAYER_KINDS = ("decoder", "memory", "pkm")
# base families whose blocks a MIDUS model is made of (their decoder layer and attention variant)
BASE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

VALUE_KINDS = ("hive", "per-head", "shared")
QUERY_NORMS = ("none", "rms", "layer")
ZERO_INITS = ("proj", "bank", "none")
# the memory settings and their defaults: the recipe's schema (midus.recipe) reads them from here
MEMORY_DEFAULTS = {
    "n_keys": 64,  # n: sub-keys per half, n*n slots per head
    "topk": 32,  # k: slots retrieved per head and token
    "latent_dim": 64,  # r: width of the HIVE latent bank
    "values": "hive",  # one of VALUE_KINDS
    "query_norm": "rms",  # one of QUERY_NORMS
    "share_bank": False,  # one bank for all memory blocks, owned by the model
    "zero_init": "proj",  # one of ZERO_INITS: which tensor starts at zero (init_memory in modeling_midus)
    "pkm_heads": 4,  # the pkm baseline: query heads of its own projection
    "pkm_key_dim": 128,  # the pkm baseline: query / key width per head
}
MIN_SIZES = {"n_keys": 2, "topk": 1, "latent_dim": 1, "pkm_heads": 1, "pkm_key_dim": 2}
CHOICES = {"values": VALUE_KINDS, "query_norm": QUERY_NORMS, "share_bank": (False, True), "zero_init": ZERO_INITS}


def check_memory(memory: dict) -> None:
    """One-line ValueError for memory settings no model can be built with (checked on every load)."""
    unknown = sorted(set(memory) - set(MEMORY_DEFAULTS))
    if unknown:
        raise ValueError(f"memory: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(MEMORY_DEFAULTS)}")
    for name, minimum in MIN_SIZES.items():
        value = memory[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"memory.{name}: got {value!r}; must be an integer >= {minimum}")
    for name, choices in CHOICES.items():
        if memory[name] not in choices or type(memory[name]) is not type(choices[0]):
            raise ValueError(f"memory.{name}: got {memory[name]!r}; valid: {', '.join(map(str, choices))}")
    if memory["topk"] > memory["n_keys"]:
        raise ValueError(f"memory.topk={memory['topk']} exceeds n_keys={memory['n_keys']}: top-k is taken over n sub-keys")
    if memory["n_keys"] ** 2 > MAX_SLOTS:
        raise ValueError(f"memory.n_keys={memory['n_keys']} gives {memory['n_keys'] ** 2} slots, more than the int32 "
                         f"slot index holds ({MAX_SLOTS})")
    if memory["pkm_key_dim"] % 2:
        raise ValueError(f"memory.pkm_key_dim={memory['pkm_key_dim']} must be even (it is split into two halves)")


@strict
class MidusConfig(LlamaConfig):
    r"""
    layer_map (`list[dict]`, *optional*):
        One entry per layer: `kind` (decoder | memory | pkm), `source` (the base block it was copied
        from, or null) and `new` (whether growth added it). Defaults to plain decoder blocks.
    memory (`dict`, *optional*):
        Settings of the memory layers; missing keys take `MEMORY_DEFAULTS`.
    base_model_type (`str`, *optional*, defaults to `"llama"`):
        Family of the base (llama | mistral | qwen2 | qwen3): decoder and pkm blocks are that family's
        blocks, and memory blocks take its attention variant (q/k/v biases for qwen2, q/k norms for qwen3).
    layer_types (`list[str]`, *optional*):
        `full_attention` or `sliding_attention` per layer; defaults to sliding everywhere if
        `sliding_window` is set (mistral), else full.
    sliding_window (`int`, *optional*):
        Window of the `sliding_attention` layers.
    """

    model_type = "midus"

    layer_map: list | None = None
    memory: dict | None = None
    base_model_type: str = "llama"
    layer_types: list | None = None
    sliding_window: int | None = None

    def __post_init__(self, **kwargs):
        if self.layer_types is None:
            kind = "sliding_attention" if self.sliding_window is not None else "full_attention"
            self.layer_types = [kind] * self.num_hidden_layers
        if self.layer_map is None:
            self.layer_map = [{"kind": "decoder", "source": i, "new": False} for i in range(self.num_hidden_layers)]
        self.memory = {**MEMORY_DEFAULTS, **(self.memory or {})}
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        if len(self.layer_map) != self.num_hidden_layers:
            raise ValueError(f"layer_map has {len(self.layer_map)} entries for {self.num_hidden_layers} layers")
        kinds = {entry["kind"] for entry in self.layer_map}
        if not kinds <= set(LAYER_KINDS):
            raise ValueError(f"unknown layer kind in {sorted(kinds)}; valid: {', '.join(LAYER_KINDS)}")
        if self.base_model_type not in BASE_MODEL_TYPES:
            raise ValueError(f"base_model_type {self.base_model_type!r}; valid: {', '.join(BASE_MODEL_TYPES)}")
        check_memory(self.memory)

    @property
    def layer_kinds(self) -> list[str]:
        return [entry["kind"] for entry in self.layer_map]


__all__ = ["MidusConfig", "MEMORY_DEFAULTS", "LAYER_KINDS", "BASE_MODEL_TYPES", "VALUE_KINDS", "QUERY_NORMS", "ZERO_INITS",
           "check_memory"]
