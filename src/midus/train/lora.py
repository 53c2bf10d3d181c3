"""LoRA adapters through PEFT: `trainable: lora` in `midus train`, and `midus merge-adapter`.

The adapter goes on every Linear whose name is in `target_modules`; the defaults cover q/k/v (and o)
of every block, memory blocks included, and HIVE's projection P (`memory.values.proj`). The model
under the adapter stays frozen, memory keys and banks with it (they are not Linear layers).
"""

import json
from pathlib import Path

import torch
from pydantic import Field
from transformers import AutoTokenizer

from ..errors import UsageError
from ..schema import Strict

# PEFT matches a name against the end of each module path: "proj" is HIVE's P, not q_proj
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "proj"]
ADAPTER_CONFIG = "adapter_config.json"
PEFT_MISSING = "LoRA adapters need peft: pip install 'midus[lora]'"


class LoraSettings(Strict):
    """The `lora:` section of a training config (with `trainable: lora`)."""

    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float = Field(16.0, gt=0, description="scaling: the adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        DEFAULT_TARGETS, min_length=1,
        description="Linear layers to adapt, by the last part(s) of their names (default: q/k/v/o of every block "
                    "and HIVE's projection `proj`)")


def peft():
    try:
        import peft as module
    except ImportError:
        raise UsageError(PEFT_MISSING) from None
    return module


def add_adapter(model, settings: LoraSettings, base: str):
    """`model` frozen under a fresh LoRA adapter (a PeftModel); `base` is recorded as the adapter's base."""
    lora = peft().LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    try:
        adapted = peft().get_peft_model(model, lora)
    except ValueError as error:  # no module matched
        names = ", ".join(settings.target_modules)
        raise UsageError(f"lora.target_modules: none of {names} names a Linear layer of the model "
                         f"({str(error).splitlines()[0]})") from None
    adapted.peft_config["default"].base_model_name_or_path = base_reference(base)
    return adapted


def adapted(model, config, checkpoint: Path | None = None):
    """`model` under the run's adapter: a new one, or (a finished run) the one saved in `checkpoint`."""
    if checkpoint is not None:
        return load_adapter(model, checkpoint)
    return add_adapter(model, config.lora_settings, config.model)


def base_reference(base: str) -> str:
    """A folder as an absolute path (the adapter is merged from anywhere), a hub id as it is."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base


def load_adapter(model, adapter: str | Path, trainable: bool = False):
    return peft().PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)


def adapter_base(adapter: Path) -> str:
    """The base model an adapter folder was trained on (its adapter_config.json)."""
    config_file = adapter / ADAPTER_CONFIG
    if not config_file.is_file():
        raise UsageError(f"{adapter}: not a LoRA adapter folder (no {ADAPTER_CONFIG}); "
                         "`midus train` with trainable: lora writes one to OUTPUT_DIR/model")
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as error:
        raise UsageError(f"{config_file}: unreadable ({error})") from None
    if not base:
        raise UsageError(f"{config_file} names no base model; give it with --base")
    return base


def merge_adapter(adapter: str | Path, out_dir: str | Path, base: str | None = None) -> Path:
    """Write base + adapter, merged into plain weights, as a model folder of the base's format (a MIDUS
    folder with its code, or a plain Llama) in the base's dtype, atomically."""
    from ..checkpoint import atomic_dir, check_out_dir, load_config, load_tokenizer, load_weights, resolve, save_model
    from ..recipe import RECIPE_FILE
    from .run import saved_dtype

    adapter, out_dir = Path(adapter), check_out_dir(out_dir)
    base = base or adapter_base(adapter)
    if base.startswith("/") and not Path(base).exists():
        raise UsageError(f"the adapter's base {base} is gone; give the base model folder with --base")
    dtype = saved_dtype(load_config(base))
    model = load_weights(resolve(base), f"base {base}", dtype=torch.float32)
    try:
        merged = load_adapter(model, adapter).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as error:
        raise UsageError(f"{adapter}: does not fit base {base} ({str(error).splitlines()[0]})") from None
    # `midus train` saves the tokenizer next to the adapter (no config.json there: load it as it is)
    tokenizer = (AutoTokenizer.from_pretrained(adapter) if (adapter / "tokenizer_config.json").is_file()
                 else load_tokenizer(base))
    with atomic_dir(out_dir) as folder:
        save_model(merged.to(dtype), tokenizer, folder)
        recipe = Path(base) / RECIPE_FILE
        if recipe.is_file():
            (folder / RECIPE_FILE).write_bytes(recipe.read_bytes())
    return out_dir
