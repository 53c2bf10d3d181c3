"""Which parameters are which: memory (keys and banks), new blocks, everything."""

from torch import nn

from .model.hml import ProductKeys
from .model.values import HiveProjection, MemoryValues


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def memory_group_parameter_names(model: nn.Module) -> set[str]:
    """The optimizer's memory group: sub-keys and value banks/tables (trained at the max learning rate,
    no schedule, no weight decay); the HIVE projections P are not in this set. Every parameter of the
    memory layers, P included, is `optim.memory_layer_parameter_names` (`trainable: memory`)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, ProductKeys):
            names.add(f"{module_name}.keys")
        elif isinstance(module, MemoryValues) and module.bank is not None:
            names.add(f"{module_name}.bank")
    names.update(name for name, _ in model.named_parameters() if name.endswith("shared_bank"))
    return names


def hive_projection_names(model: nn.Module) -> set[str]:
    """HIVE's projections P of every memory block (`projection_group: memory` trains them with the memory)."""
    return {f"{module_name}.weight" for module_name, module in model.named_modules()
            if isinstance(module, HiveProjection)}


def layer_kind(layer: nn.Module) -> str:
    """decoder | memory | pkm, from what the block holds (the classes of a checkpoint's shipped code
    are not ours, so no isinstance): an HML as `memory`, or a product-key memory as its FFN."""
    if hasattr(getattr(layer, "memory", None), "retrieve"):
        return "memory"
    if hasattr(getattr(layer, "mlp", None), "retrieval"):
        return "pkm"
    return "decoder"


def new_layer_indices(config) -> list[int]:
    """Indices of the blocks growth added, from `config.layer_map` (MIDUS and grown Llama configs)."""
    return [i for i, entry in enumerate(getattr(config, "layer_map", None) or []) if entry.get("new")]


def new_block_parameter_names(model: nn.Module) -> set[str]:
    """Parameters of the blocks growth added (`trainable: new-blocks`), plus a shared memory bank."""
    prefixes = tuple(f"model.layers.{i}." for i in new_layer_indices(model.config))
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes) or name.endswith("shared_bank")}
