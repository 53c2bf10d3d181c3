"""The MIDUS architecture. This folder is shipped flat as remote code with every MIDUS checkpoint."""

from .configuration_midus import LAYER_KINDS, MEMORY_DEFAULTS, MidusConfig
from .modeling_midus import MidusForCausalLM, MidusMemoryBlock, MidusModel, MidusPKMBlock, MidusPreTrainedModel

__all__ = [
    "LAYER_KINDS", "MEMORY_DEFAULTS", "MidusConfig", "MidusForCausalLM", "MidusMemoryBlock", "MidusModel",
    "MidusPKMBlock", "MidusPreTrainedModel",
]
