"""The paper's optimiser rule, as AdamW parameter groups with one learning-rate schedule per group.

    memory  (sub-keys, latent bank / value tables)   lr = memory_lr at every step, weight decay 0
            (+ HIVE's projections P with projection_group: memory)
    decay   (every other matrix)                      warmup + cosine to a floor, weight decay
    no_decay (norms, biases, other vectors)           warmup + cosine to a floor, weight decay 0
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from ..model.hml import HeadwiseMemoryLayer, ProductKeyMemory
from ..parameters import hive_projection_names, memory_group_parameter_names, new_block_parameter_names

# prefixes wrappers (DDP, FSDP, activation checkpointing, torch.compile) put in front of parameter names
WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def memory_layer_parameter_names(model: nn.Module) -> set[str]:
    """Every parameter of the memory layers (keys, banks, HIVE projections, a pkm query projection)."""
    names = {f"{module_name}.{name}" for module_name, module in model.named_modules()
             if isinstance(module, (HeadwiseMemoryLayer, ProductKeyMemory)) for name, _ in module.named_parameters()}
    return names | {name for name, _ in model.named_parameters() if name.endswith("shared_bank")}


def select_trainable(model: nn.Module, trainable: str) -> int:
    """Freeze every parameter outside `trainable` (all | new-blocks | memory); the count left to train."""
    if trainable == "all":
        chosen = {name for name, _ in model.named_parameters()}
    elif trainable == "new-blocks":
        chosen = new_block_parameter_names(model)
        if not chosen:
            raise UsageError("trainable: new-blocks, but the model's config has no layer_map with new blocks "
                             "(only models grown by `midus upscale` have one); use trainable: all")
    else:
        chosen = memory_layer_parameter_names(model)
        if not chosen:
            raise UsageError("trainable: memory, but the model has no memory layers; use trainable: all")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_groups(model: nn.Module, lr: float, memory_lr: float, weight_decay: float,
                     projection_group: str = "scheduled") -> list[dict]:
    """AdamW groups of the trainable parameters; `scheduled` says whether the group's LR is scheduled."""
    memory = memory_group_parameter_names(model)
    if projection_group == "memory":
        memory |= hive_projection_names(model)
    memory = {canonical_name(name) for name in memory}
    groups = {
        "decay": dict(lr=lr, weight_decay=weight_decay, scheduled=True),
        "no_decay": dict(lr=lr, weight_decay=0.0, scheduled=True),
        "memory": dict(lr=memory_lr, weight_decay=0.0, scheduled=False),
    }
    params = {key: [] for key in groups}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = "memory" if canonical_name(name) in memory else "decay" if parameter.ndim >= 2 else "no_decay"
        params[key].append(parameter)
    return [dict(name=key, params=params[key], **groups[key]) for key in groups if params[key]]


@dataclass
class WarmupCosine:
    """LR multiplier at optimizer step `step` (0-based): linear warmup to 1, cosine decay to `floor`."""

    warmup_steps: int
    total_steps: int
    floor: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps - 1))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Constant:
    """LR multiplier 1 at every step: the memory group's rule (max LR, no schedule)."""

    def __call__(self, step: int) -> float:
        return 1.0


def build_optimizer(model: nn.Module, config) -> torch.optim.AdamW:
    groups = parameter_groups(model, config.lr, config.memory_lr or config.lr, config.weight_decay,
                              config.projection_group)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, config) -> torch.optim.lr_scheduler.LambdaLR:
    scheduled = WarmupCosine(config.warmup_steps, config.total_steps, config.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [scheduled if group["scheduled"] else Constant() for group in optimizer.param_groups])

