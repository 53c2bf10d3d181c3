"""The base model's tensors by name, read one at a time.

Growth never needs the whole base in memory: a method asks for `model.layers.3.mlp.up_proj.weight`
and gets that tensor alone, read from the base's safetensors (memory-mapped, closed after each read),
from a model already in memory, or as a shape on the meta device (config-only growth, `midus inspect`).
"""

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel

from ..checkpoint import DTYPES, first_line, load_base, resolve
from ..errors import MidusError


class BaseWeights:
    """`weights["model.layers.0.self_attn.q_proj.weight"]` -> that tensor of the base, in `dtype` on `device`."""

    def __init__(self, config, dtype: torch.dtype, device: torch.device | str, read: Callable[[str], torch.Tensor],
                 name: str = "base"):
        self.config, self.dtype, self.device, self.name = config, dtype, torch.device(device), name
        self._read = read

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def is_meta(self) -> bool:
        return self.device.type == "meta"

    def __getitem__(self, key: str) -> torch.Tensor:
        if key == "lm_head.weight" and getattr(self.config, "tie_word_embeddings", False):
            key = "model.embed_tokens.weight"
        return self._read(key).to(device=self.device, dtype=self.dtype)

    def layer(self, index: int, name: str) -> torch.Tensor:
        return self[f"model.layers.{index}.{name}"]

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> "BaseWeights":
        """A model in memory (or on the meta device): its own dtype and device."""
        state = model.state_dict()

        def read(key: str) -> torch.Tensor:
            if key not in state:
                raise MidusError(f"base: the model has no tensor {key}")
            return state[key]

        return cls(model.config, model.dtype, model.device, read, getattr(model, "name_or_path", "") or "base")

    @classmethod
    def from_safetensors(cls, folder: str | Path, config, dtype: torch.dtype, name: str) -> "BaseWeights":
        """Read tensor by tensor from the folder's *.safetensors; each read maps the file and unmaps it."""
        files = sorted(Path(folder).glob("*.safetensors"))
        where = {}
        try:
            for file in files:
                with safe_open(file, framework="pt") as handle:
                    where.update(dict.fromkeys(handle.keys(), file))
        except (SafetensorError, OSError) as error:
            raise MidusError(f"base {name}: cannot load its weights ({first_line(error)})") from None

        def read(key: str) -> torch.Tensor:
            if key not in where:
                raise MidusError(f"base {name}: cannot load its weights (no tensor {key} in its safetensors)")
            with safe_open(where[key], framework="pt") as handle:
                return handle.get_tensor(key)

        return cls(config, dtype, "cpu", read, name)


def has_safetensors(folder: str | Path) -> bool:
    return any(Path(folder).glob("*.safetensors"))


def open_base(name: str, config, dtype: str) -> BaseWeights:
    """The weights of a base (folder or hub id), streamed from its safetensors where it has them;
    a checkpoint in another format is loaded whole."""
    source = resolve(name)
    folder = Path(source) if Path(source).is_dir() else _download(name)
    if has_safetensors(folder):
        return BaseWeights.from_safetensors(folder, config, DTYPES[dtype], name)
    model, _ = load_base(name, dtype)
    return BaseWeights.from_model(model)


def _download(name: str) -> Path:
    """A hub id's safetensors and JSON files (from the local cache when offline)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as error:  # hub errors come in many classes; all mean the same here
        raise MidusError(f"base {name}: cannot load its weights ({first_line(error)})") from None
