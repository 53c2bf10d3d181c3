"""MIDUS: Memory-Infused Depth Up-Scaling. Importing the package registers the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .model import MidusConfig, MidusForCausalLM, MidusModel

AutoConfig.register("midus", MidusConfig)
AutoModel.register(MidusConfig, MidusModel)
AutoModelForCausalLM.register(MidusConfig, MidusForCausalLM)
# save_pretrained ships the modeling code with every MIDUS checkpoint
MidusConfig.register_for_auto_class()
MidusModel.register_for_auto_class("AutoModel")
MidusForCausalLM.register_for_auto_class("AutoModelForCausalLM")

from .recipe import Recipe  # noqa: E402
from .growth import upscale  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MidusConfig", "MidusModel", "MidusForCausalLM", "Recipe", "upscale"]
