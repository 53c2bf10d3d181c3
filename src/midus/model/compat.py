"""What this folder needs from transformers, resolved once at import for the release that runs it.

This folder is copied into every MIDUS checkpoint and loaded, months later, by whatever transformers
the user has. Releases differ in ways that change results silently, so each difference is detected
from transformers itself (signatures, dataclass fields), never guessed from a version number:

- the KV cache is `past_key_values=` up to 5.23 and `cache=` from 5.24 on, in the decoder layers,
  the mask builders, `generate` and the model outputs; from 5.25 the mask builders' signatures show
  both names (the old one a deprecated alias), and the new name wins;
- a release outside the tested range gets one warning naming both versions.

What cannot be detected up front (a cache argument under a name we do not know) is an error at
call time, never a silently wrong forward.
"""

import dataclasses
import inspect

import transformers
from packaging.version import Version
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import logging
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM

# The transformers releases CI ran this code on: the lowest accepted one and the newest release.
# pyproject.toml declares the same range (a test holds them equal).
TESTED_TRANSFORMERS = ("5.16.0", "5.25.0")
CACHE_NAMES = ("cache", "past_key_values")  # the KV cache's name, newest first (a signature may show both)


# One logger name for every copy of this file (each checkpoint, and its config and model halves, load
# their own copy), so that warning_once warns once per process.
logger = logging.get_logger("transformers.midus")


def range_note(version: str) -> str | None:
    """A warning for a release outside the tested range (patch releases of the newest minor count)."""
    lowest, newest = (Version(v) for v in TESTED_TRANSFORMERS)
    running = Version(version)
    if lowest <= running and running.release[:2] <= newest.release[:2]:
        return None
    return (f"MIDUS modeling code was tested with transformers {TESTED_TRANSFORMERS[0]} to "
            f"{TESTED_TRANSFORMERS[1]}; this is transformers {version}. It checks the APIs it uses and "
            f"raises where they changed, but the results of this release are untested.")


def cache_name(function) -> str:
    """The name under which `function` (a transformers callable) takes the KV cache."""
    parameters = inspect.signature(function).parameters
    for name in CACHE_NAMES:
        if name in parameters:
            return name
    raise ImportError(
        f"transformers {transformers.__version__}: {function.__qualname__} takes the KV cache under none of "
        f"{', '.join(CACHE_NAMES)}; this MIDUS code (tested with transformers {' to '.join(TESTED_TRANSFORMERS)}) "
        f"cannot pass it on")


CACHE_ARG = cache_name(LlamaDecoderLayer.forward)  # what the models and decoder layers of every family take
MASK_CACHE = cache_name(create_causal_mask)
for _function, _name in [(LlamaForCausalLM.forward, CACHE_ARG), (create_sliding_window_causal_mask, MASK_CACHE)]:
    if cache_name(_function) != _name:
        raise ImportError(f"transformers {transformers.__version__}: {_function.__qualname__} takes the cache as "
                          f"{cache_name(_function)}, its siblings as {_name}")
OUTPUT_FIELDS = {field.name for field in dataclasses.fields(BaseModelOutputWithPast)}
OUTPUT_CACHE = next((name for name in CACHE_NAMES if name in OUTPUT_FIELDS), None)
if OUTPUT_CACHE is None:
    raise ImportError(f"transformers {transformers.__version__}: model outputs hold the KV cache under none of "
                      f"{', '.join(CACHE_NAMES)}")

_note = range_note(transformers.__version__)
if _note:
    logger.warning_once(_note)


def take_cache(cache, past_key_values, kwargs: dict):
    """The one KV cache a forward was given, under either name; anything else cache-like is an error.

    An argument we do not understand would otherwise fall through `**kwargs`, the model would start a
    fresh cache, and decoding would go on with positions restarted at 0 (wrong logits, no error).
    """
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("got two different KV caches, `cache=` and `past_key_values=`; pass one")
    unknown = sorted(key for key in kwargs if "cache" in key or "past" in key)
    if unknown:
        raise TypeError(
            f"unknown cache argument(s) {', '.join(unknown)} (transformers {transformers.__version__}); MIDUS models "
            f"take the KV cache as `cache=` or `past_key_values=`, and use_cache")
    return cache if cache is not None else past_key_values


def keep_last(hidden_states, logits_to_keep):
    """The positions to compute logits for: the last `logits_to_keep` (0: all), or the given indices."""
    if isinstance(logits_to_keep, int):
        return hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
    return hidden_states[:, logits_to_keep]
