"""A GGUF file as a base: de-quantised by transformers' GGUF loader, rebuilt as a plain Llama and
cached as a normal Hugging Face folder (written atomically), so growth, training and evaluation read
it like any other base.

    <cache>/gguf-<stem>-<key>/   config.json, model.safetensors, tokenizer files, gguf_source.json

The key hashes the file's content and CONVERT_VERSION. transformers refuses to `save_pretrained` a
GGUF-loaded model (its config carries a quantization_config), so the weights move into a fresh
`LlamaForCausalLM` built from the same config without it; every key must match.
"""

import hashlib
import json
from pathlib import Path

import torch

from .assets import AssetError, asset_path, install_command
from .checkpoint import SUPPORTED_MODEL_TYPES, atomic_dir, file_digest, save_model
from .data.corpus import cache_root
from .errors import MidusError

CONVERT_VERSION = 1  # bump when the conversion changes what a cache holds
SOURCE_FILE = "gguf_source.json"


def gguf_architecture(path: Path) -> str:
    """`general.architecture` from the file's header (read in milliseconds, before the slow load)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise AssetError(f"reading {path.name} needs the gguf package; install it: {install_command('gguf')}") from None
    try:
        field = GGUFReader(path).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (ValueError, KeyError, IndexError, OSError) as error:
        raise MidusError(f"{path}: not a readable GGUF file ({error})") from None


def gguf_config(spec: str):
    """The base's LlamaConfig from the GGUF header alone (no tensors de-quantised): for plans and checks."""
    from transformers import AutoConfig, LlamaConfig

    path = asset_path(spec)
    check_architecture(path)
    settings = AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()
    settings.pop("quantization_config", None)
    return LlamaConfig.from_dict(settings)


def check_architecture(path: Path) -> str:
    architecture = gguf_architecture(path)
    if architecture not in SUPPORTED_MODEL_TYPES:
        raise MidusError(f"{path.name}: a GGUF of architecture {architecture!r}; a base must be a Llama-family "
                         f"decoder ({', '.join(SUPPORTED_MODEL_TYPES)})")
    return architecture


def gguf_base_folder(spec: str, cache_dir: str | Path | None = None) -> Path:
    path = asset_path(spec)
    key = hashlib.sha256(f"{CONVERT_VERSION}:{file_digest(path)}".encode()).hexdigest()[:12]
    return Path(cache_dir or cache_root()) / f"gguf-{path.stem}-{key}"


def prepare_gguf_base(spec: str, cache_dir: str | Path | None = None) -> Path:
    """The cached HF folder of the GGUF file `spec` (a path, or MODULE:FILE of an installed package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = asset_path(spec)
    folder = gguf_base_folder(spec, cache_dir)
    if (folder / SOURCE_FILE).is_file():
        return folder
    architecture = check_architecture(path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, OSError, KeyError, RuntimeError) as error:
        raise MidusError(f"{path}: transformers cannot load this GGUF ({str(error).splitlines()[0]})") from None
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    if settings.get("model_type") != "llama":
        raise MidusError(f"{path.name}: loaded as {settings.get('model_type')!r}; only GGUF Llama files are converted")
    model = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    model.load_state_dict(loaded.state_dict(), strict=True)
    with atomic_dir(folder) as tmp:
        save_model(model, tokenizer, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(path), "sha256": file_digest(path),
                                                   "architecture": architecture, "version": CONVERT_VERSION}) + "\n")
    return folder
