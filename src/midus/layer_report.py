"""`midus inspect MODEL_OR_RECIPE`: what a model is made of, from its config alone.

The model (a checkpoint folder or hub id, or the model a recipe would grow) is built on the meta
device: no weights are read or allocated, so the paper's 8B recipes inspect in a few hundred MB.

JSON schema (`midus inspect ... --json`; version in "schema", keys always present, counts are ints):

    {
      "schema": "midus.inspect/1",
      "name": str,                      # as given
      "source": "recipe" | "model",
      "recipe": {...} | null,           # the recipe's fields (defaults filled in) when inspecting one
      "model_type": str,                # of the (grown) model: llama, mistral, qwen2, qwen3, midus
      "base_model_type": str,           # family of its blocks
      "num_layers": int, "new_layers": int,
      "trainable_mode": "all" | "new-blocks" | "memory",
      "layers": [                       # one per block, in stack order
        {"index": int, "kind": "decoder" | "memory" | "pkm", "source": int | null, "new": bool,
         "trainable": bool,             # any of its parameters trained under trainable_mode
         "parameters": int, "flops_per_token": int}
      ],
      "parameters": {
        "total": int, "base": int,      # base: the model minus what growth added
        "added": int, "added_share": float,   # added / base
        "trainable": int,
        "embeddings": int, "head": int, # head: 0 when tied to the embeddings
        "final_norm": int,
        "backbone_blocks": int,         # blocks that are not new
        "new_blocks": {"total": int, "attention": int, "ffn": int, "keys": int,
                       "latent_bank": int,   # HIVE's bank U, or the value tables (per-head, shared, pkm)
                       "projections": int,   # HIVE's per-head P, pkm's query projection
                       "norms": int}
      },
      "flops_per_token": {
        "context": int,                 # keys each query attends to (sliding layers: at most the window)
        "total": int, "base": int, "ratio": float,   # ratio: total / base
        "weights": int,                 # 2 x every weight matmul, memory scoring and pooling, the LM head
        "attention": int                # 2 x (QK^T + AV): 4 * heads * head_dim * context per layer
      }
    }

FLOPs are forward FLOPs per token (2 per multiply-add): linear layers 2·in·out; a memory layer's key
scoring 2·H·n·d_k and pooling 2·H·k·w (w: the bank's width); attention 4·H·d_h·context; the LM
head 2·d·V. Norms, activations, softmax, RoPE and the top-k selection are not counted.
"""

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from .checkpoint import load_config
from .errors import MidusError, UsageError
from .model.hml import HeadwiseMemoryLayer, ProductKeyMemory
from .parameters import count_parameters
from .recipe import Recipe

SCHEMA = "midus.inspect/1"
TRAINABLE_MODES = ("all", "new-blocks", "memory")
COMPONENTS = ("attention", "ffn", "keys", "latent_bank", "projections", "norms")


def inspect(name: str, *, base: str | None = None, trainable: str = "all", context: int = 2048) -> dict:
    """The report of a model folder / hub id, or of the model a recipe YAML grows (`base` overrides
    the recipe's base, e.g. a local folder holding just the base's config.json)."""
    from .growth import grow_on_meta

    if trainable not in TRAINABLE_MODES:
        raise UsageError(f"--trainable {trainable!r}; valid: {', '.join(TRAINABLE_MODES)}")
    if context < 0:
        raise UsageError(f"--context {context}: must be >= 0")
    recipe = None
    if Path(name).suffix in (".yaml", ".yml"):
        recipe = Recipe.from_yaml(name)
        if base is not None:
            recipe = Recipe.parse({**recipe.model_dump(exclude_none=True), "base": base}, source=name)
        try:
            config = load_config(recipe.base)
        except MidusError as error:
            raise MidusError(f"{error}; to inspect the recipe on a local copy of the base's config.json, "
                             "pass --base FOLDER") from None
        model = grow_on_meta(recipe, config)
    else:
        if base is not None:
            raise UsageError("--base applies to a recipe, not to a model")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(load_config(name))
    return describe(model, name=name, recipe=recipe, trainable=trainable, context=context)


def describe(model: PreTrainedModel, *, name: str = "", recipe: Recipe | None = None, trainable: str = "all",
             context: int = 2048) -> dict:
    """The report of a model (any device; meta is enough)."""
    config = model.config
    layer_map = getattr(config, "layer_map", None) or [
        {"kind": "decoder", "source": i, "new": False} for i in range(config.num_hidden_layers)]
    trained = trainable_names(model, trainable)
    layers, new_parts = [], dict.fromkeys(COMPONENTS, 0)
    for index, (layer, entry) in enumerate(zip(model.model.layers, layer_map)):
        names = [f"model.layers.{index}.{n}" for n, _ in layer.named_parameters()]
        layers.append({
            "index": index, "kind": entry["kind"], "source": entry.get("source"), "new": bool(entry.get("new")),
            "trainable": any(n in trained for n in names), "parameters": count_parameters(layer),
            "flops_per_token": layer_flops(layer, attended(config, index, context)),
        })
        if entry.get("new"):
            for n, param in layer.named_parameters():
                new_parts[component(n)] += param.numel()
    shared_bank = model.model.shared_bank.numel() if getattr(model.model, "shared_bank", None) is not None else 0
    new_parts["latent_bank"] += shared_bank

    total = count_parameters(model)
    new_total = sum(new_parts.values())
    head = 0 if config.tie_word_embeddings else model.lm_head.weight.numel()
    head_flops = 2 * model.lm_head.weight.numel()
    attention = sum(4 * attention_width(layer) * attended(config, i, context) for i, layer in enumerate(model.model.layers))
    total_flops = sum(layer["flops_per_token"] for layer in layers) + head_flops
    base_flops = sum(layer["flops_per_token"] for layer in layers if not layer["new"]) + head_flops
    return {
        "schema": SCHEMA,
        "name": name,
        "source": "recipe" if recipe is not None else "model",
        "recipe": recipe.model_dump(mode="json") if recipe is not None else None,
        "model_type": config.model_type,
        "base_model_type": getattr(config, "base_model_type", config.model_type),
        "num_layers": len(layers),
        "new_layers": sum(layer["new"] for layer in layers),
        "trainable_mode": trainable,
        "layers": layers,
        "parameters": {
            "total": total,
            "base": total - new_total,
            "added": new_total,
            "added_share": new_total / (total - new_total),
            "trainable": sum(p.numel() for n, p in model.named_parameters() if n in trained),
            "embeddings": model.model.embed_tokens.weight.numel(),
            "head": head,
            "final_norm": count_parameters(model.model.norm),
            "backbone_blocks": sum(layer["parameters"] for layer in layers if not layer["new"]),
            "new_blocks": {"total": new_total, **new_parts},
        },
        "flops_per_token": {
            "context": context,
            "total": total_flops,
            "base": base_flops,
            "ratio": total_flops / base_flops,
            "weights": total_flops - attention,
            "attention": attention,
        },
    }


def component(name: str) -> str:
    """Which part of a block a parameter (name inside the block) belongs to."""
    if name.endswith("retrieval.keys"):
        return "keys"
    if name.endswith("values.bank"):
        return "latent_bank"
    if name.startswith("mlp.query_proj") or ".values.proj" in name:
        return "projections"
    if name.startswith("self_attn."):
        return "attention"
    if name.startswith("mlp."):
        return "ffn"
    return "norms"


def trainable_names(model: nn.Module, trainable: str) -> set[str]:
    if trainable == "all":
        return {name for name, _ in model.named_parameters()}
    from .train.optim import select_trainable  # the training's own rule, so the two always agree

    before = {name: p.requires_grad for name, p in model.named_parameters()}
    select_trainable(model, trainable)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        p.requires_grad_(before[name])
    return names


def attended(config, index: int, context: int) -> int:
    """Keys a query of layer `index` attends to: the context, or at most the sliding window."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    sliding = layer_types[index] == "sliding_attention" if layer_types else window is not None
    return min(context, window) if sliding and window else context


def attention_width(layer: nn.Module) -> int:
    """H·d_h of the layer's attention (the query width)."""
    return layer.self_attn.q_proj.out_features


def layer_flops(layer: nn.Module, context: int) -> int:
    """Forward FLOPs per token of one block (see the module docstring)."""
    flops = sum(2 * m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear))
    for memory in (m for m in layer.modules() if isinstance(m, (HeadwiseMemoryLayer, ProductKeyMemory))):
        heads, _, n_keys, half = memory.retrieval.keys.shape
        flops += 2 * heads * n_keys * 2 * half  # both halves scored against n sub-keys
        flops += 2 * heads * memory.retrieval.topk * memory.values.bank_shape[-1]  # weighted pooling
    return flops + 4 * attention_width(layer) * context


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)


def render(report: dict) -> str:
    """The report as text tables."""
    p, f = report["parameters"], report["flops_per_token"]
    width = max(len(str(p["total"])) + 4, 14)
    lines = [f"{report['name']}: {report['model_type']} ({report['base_model_type']} blocks), "
             f"{report['num_layers']} layers, {report['new_layers']} new", "",
             f"{'layer':>5}  {'kind':<8}{'source':>6}  {'new':<4}{'trainable':<10}{'parameters':>{width}}{'FLOPs/token':>14}"]
    for layer in report["layers"]:
        source = "-" if layer["source"] is None else layer["source"]
        lines.append(f"{layer['index']:>5}  {layer['kind']:<8}{source:>6}  {'yes' if layer['new'] else '':<4}"
                     f"{'yes' if layer['trainable'] else 'no':<10}{layer['parameters']:>{width},}"
                     f"{si(layer['flops_per_token']):>14}")
    lines += ["", "parameters"]
    rows = [("embeddings", p["embeddings"]), ("head" + (" (tied)" if not p["head"] else ""), p["head"]),
            ("final norm", p["final_norm"]), ("backbone blocks", p["backbone_blocks"]),
            ("new blocks", p["new_blocks"]["total"])]
    rows += [(f"  {part.replace('_', ' ')}", p["new_blocks"][part]) for part in COMPONENTS if p["new_blocks"][part]]
    rows += [("total", p["total"]), ("base", p["base"]),
             ("added", p["added"]), (f"trainable ({report['trainable_mode']})", p["trainable"])]
    lines += [f"  {label:<22}{value:>{width},}" for label, value in rows]
    lines += [f"  added share of base   {p['added_share']:>{width}.2%}", "",
              f"FLOPs per token (forward, context {f['context']}): {si(f['total'])} "
              f"(weights {si(f['weights'])} + attention {si(f['attention'])}); "
              f"base {si(f['base'])}; ratio {f['ratio']:.3f}"]
    return "\n".join(lines)


def si(count: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.3g}"
