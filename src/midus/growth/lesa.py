"""LESA (Yang et al. 2025): new layers predicted from their neighbours in an SVD basis.

For each weight kind (q, k, v, o, gate, up, down), the L layers' matrices W_l [out, in] are
concatenated along the input dimension and factorised once:

    [W_0 ... W_{L-1}] = U Σ Vᵀ,   Vᵀ split per layer: W_l = UΣ · V_l,  V_l [r, in]

A small MLP (Linear-ReLU-Linear-ReLU-Linear) learns to predict each row of V_i from the same row of
V_{i-1} and V_{i+1} (rows of all layers 1..L-2 are the training set), with loss
(1-λ)·MSE + λ·(‖ŷ‖ - ‖y‖)² per batch, AdamW, for a few epochs. A new layer inserted after block i
gets W = UΣ · MLP([V_i, V_{i+1}]) (after the last block: [V_{L-1}, V_{L-1}]). Its other tensors (RMSNorm
weights, biases) are block 0's by default, as in the authors' code (yangyifei729/LESA, load_LESA.ipynb:
every new layer starts as a deep copy of block 0 and gets the seven predicted matrices), or block i's
(`norms_from: source`).
"""

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..recipe import Recipe, RecipeError
from ..schema import Strict
from .grow import copy_module, fill, grow_decoders, insertion_layout
from .registry import register
from .weights import BaseWeights

WEIGHT_KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class LesaSettings(Strict):
    """LESA's layer predictor, an MLP Linear-ReLU-Linear-ReLU-Linear (defaults: the paper's)."""

    hidden: int = Field(256, ge=1, strict=True, description="width of the predictor's hidden layers")
    epochs: int = Field(10, ge=1, strict=True, description="passes over the training rows of every weight kind")
    batch_size: int = Field(64, ge=1, strict=True, description="rows of V per optimizer step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    norm_weight: float = Field(5e-4, ge=0, le=1, description="lambda: loss = (1-lambda) MSE + lambda MSE of the norms")
    norms_from: Literal["block-0", "source"] = Field(
        "block-0", description="where a new layer's tensors that are not predicted (RMSNorm weights, biases) come from: "
                               "block-0 (the authors' code builds every new layer from a copy of block 0) or source "
                               "(the block it is inserted after)")


class LesaRecipe(Recipe):
    method: Literal["lesa"]
    lesa: LesaSettings = Field(LesaSettings(), description="the layer predictor; defaults filled in")


def factorize(weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """UΣ [out, r] and V [L, r, in] (V[l] = layer l's block of Vᵀ) from the SVD of the L layers'
    matrices concatenated along their input dimension, in fp32: W_l = UΣ · V[l]."""
    concatenated = torch.cat([w.float() for w in weights], dim=1)
    U, S, Vh = torch.linalg.svd(concatenated, full_matrices=False)
    del concatenated
    return U * S, Vh.view(Vh.shape[0], len(weights), -1).transpose(0, 1)


class LayerPredictor(nn.Sequential):
    """Row of V_{i-1} and V_{i+1} concatenated [2·in] -> the row of V_i [in]."""

    def __init__(self, width: int, hidden: int):
        super().__init__(nn.Linear(2 * width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, width))


def neighbours(V: torch.Tensor, before: torch.Tensor, after: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Inputs [len(rows), 2·in] for the given rows of layers `before` and `after` of V [L, r, in]."""
    return torch.cat([V[before, rows], V[after, rows]], dim=-1)


def train_predictor(V: torch.Tensor, settings: LesaSettings, generator: torch.Generator,
                    progress: tqdm | None = None) -> tuple[LayerPredictor, list[float]]:
    """Fit the predictor on every row of the middle layers of V [L, r, in]; mean loss per epoch."""
    L, rows, width = V.shape
    predictor = LayerPredictor(width, settings.hidden)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=settings.lr)
    lam = settings.norm_weight
    samples = (L - 2) * rows  # sample s: row s % rows of middle layer 1 + s // rows
    losses = []
    for _ in range(settings.epochs):
        total, batches = 0.0, 0
        for batch in torch.randperm(samples, generator=generator).split(settings.batch_size):
            layer, row = 1 + batch // rows, batch % rows
            target = V[layer, row]
            output = predictor(neighbours(V, layer - 1, layer + 1, row))
            mse = nn.functional.mse_loss(output, target)
            norm_mse = (output.norm() - target.norm()) ** 2
            loss = (1 - lam) * mse + lam * norm_mse
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / batches)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3g}")
    return predictor.eval(), losses


@torch.no_grad()
def predict_layer(predictor: LayerPredictor, US: torch.Tensor, V: torch.Tensor, source: int) -> torch.Tensor:
    """W of a new layer inserted after block `source`: UΣ · MLP([V_source, V_source+1])."""
    after = min(source + 1, V.shape[0] - 1)
    rows = torch.arange(V.shape[1])
    V_new = predictor(neighbours(V, torch.full_like(rows, source), torch.full_like(rows, after), rows))
    return US @ V_new


@register("lesa", recipe=LesaRecipe, display="LESA", function_preserving=False, color="tab:purple")
def grow_lesa(base: BaseWeights, recipe: LesaRecipe) -> PreTrainedModel:
    if base.num_layers < 3:
        raise RecipeError(f"lesa learns each layer from its two neighbours and needs a base of at least 3 blocks, not {base.num_layers}")
    layout = insertion_layout(recipe, base.num_layers)
    model = grow_decoders(base, layout, recipe.seed)  # new layers start as copies of their source
    if base.is_meta:  # config-only growth: the shapes are those of the copies
        return model
    new_layers = [(layer, source) for layer, (source, new) in zip(model.model.layers, layout) if new]
    if recipe.lesa.norms_from == "block-0":
        for layer, _ in new_layers:
            copy_module(layer, base, "model.layers.0.", skip=tuple(f"{kind}.weight" for kind in WEIGHT_KINDS))
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    with tqdm(total=len(WEIGHT_KINDS) * recipe.lesa.epochs, desc="lesa", unit="epoch", disable=None) as progress:
        for kind in WEIGHT_KINDS:
            progress.set_description(f"lesa: {kind}")
            US, V = factorize([base.layer(i, f"{kind}.weight") for i in range(base.num_layers)])
            with torch.enable_grad():
                predictor, _ = train_predictor(V, recipe.lesa, generator, progress)
            for layer, source in new_layers:
                weight = layer.get_submodule(kind).weight
                fill(weight, predict_layer(predictor, US, V, source).to(weight.dtype))
            del US, V
    return model
