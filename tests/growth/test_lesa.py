"""LESA: SVD per weight kind, an MLP that predicts a layer's V from its neighbours', new layers from it."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import midus
from model_helpers import grow, recipe, tokens
from midus.growth import lesa
from midus.growth.lesa import WEIGHT_KINDS, LesaSettings, factorize, predict_layer, train_predictor


def base_weights(model, kind):
    return [layer.get_submodule(kind).weight.detach() for layer in model.model.layers]


def test_svd_reconstructs_every_existing_layer(tiny_base_8):
    base = AutoModelForCausalLM.from_pretrained(tiny_base_8)
    for kind in WEIGHT_KINDS:
        weights = base_weights(base, kind)
        US, V = factorize(weights)
        assert V.shape[0] == len(weights) and V.shape[2] == weights[0].shape[1]
        for layer, weight in enumerate(weights):
            torch.testing.assert_close(US @ V[layer], weight, atol=1e-5, rtol=1e-4)


def test_predictor_loss_falls():
    # layers along a smooth path (as trained stacks are): V_i is learnable from V_{i-1} and V_{i+1}
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(2, 48, 32, generator=generator)
    V = torch.stack([start + (end - start) * t for t in torch.linspace(0, 1, 8)])
    V = V + 0.01 * torch.randn(V.shape, generator=generator)
    _, losses = train_predictor(V, LesaSettings(epochs=10, hidden=64), torch.Generator().manual_seed(0))
    assert len(losses) == 10
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(b <= a * 1.05 for a, b in zip(losses, losses[1:])), losses


def test_prediction_is_built_in_the_svd_basis():
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(6, 4, generator=generator) for _ in range(5)]
    US, V = factorize(weights)
    predictor, _ = train_predictor(V, LesaSettings(epochs=1, hidden=8), generator)
    rows = torch.arange(V.shape[1])
    with torch.no_grad():
        V_new = predictor(torch.cat([V[2, rows], V[3, rows]], dim=-1))
    torch.testing.assert_close(predict_layer(predictor, US, V, source=2), US @ V_new)


def test_grown_model_runs_and_new_layers_differ_from_neighbours(tiny_base_8):
    base = AutoModelForCausalLM.from_pretrained(tiny_base_8)
    grown = grow(tiny_base_8, "lesa", new_blocks=4, placement="top-heavy")
    assert type(grown) is type(base) and grown.config.num_hidden_layers == 12
    x = tokens(vocab=base.config.vocab_size)
    with torch.no_grad():
        logits = grown(x).logits
    assert torch.isfinite(logits).all()
    layers = grown.model.layers
    for j, entry in enumerate(grown.config.layer_map):
        if not entry["new"]:
            continue
        before, after = layers[j - 1], layers[j + 1]  # the source block and the next one
        for kind in WEIGHT_KINDS:
            weight = layers[j].get_submodule(kind).weight
            assert not torch.equal(weight, before.get_submodule(kind).weight), (j, kind)
            assert not torch.equal(weight, after.get_submodule(kind).weight), (j, kind)
    # existing layers are untouched copies
    for j, entry in enumerate(grown.config.layer_map):
        if not entry["new"]:
            for name, param in layers[j].named_parameters():
                assert torch.equal(param, base.model.layers[entry["source"]].get_parameter(name)), (j, name)


def test_seeded(tiny_base):
    first, second = grow(tiny_base, "lesa", seed=3), grow(tiny_base, "lesa", seed=3)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def base_with_distinct_norms(folder):
    """The tiny base with every block's RMSNorm weights made different, so where a copy came from shows."""
    base = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return base


@pytest.mark.parametrize("norms_from", ["block-0", "source"])
def test_new_layers_match_the_authors_procedure(tiny_base_8, monkeypatch, norms_from):
    # reference, written as the authors' notebook does it: per kind, SVD of [W_0 ... W_{L-1}] (along the
    # input dimension), V_l = columns l*in..(l+1)*in of Vᵀ, the layer inserted between blocks s and s+1
    # is (U*S) @ MLP(cat([V_s, V_{s+1}], dim=1)); its norms are block 0's (or its source block's)
    trained = []

    def recorded(*args, **kwargs):
        predictor, losses = train_predictor(*args, **kwargs)
        trained.append(predictor)
        return predictor, losses

    monkeypatch.setattr(lesa, "train_predictor", recorded)
    base = base_with_distinct_norms(tiny_base_8)
    grown = midus.upscale(base, recipe(tiny_base_8, "lesa", new_blocks=3, placement="top-heavy",
                                       lesa={"epochs": 1, "hidden": 16, "norms_from": norms_from}))
    new = [(j, entry["source"]) for j, entry in enumerate(grown.config.layer_map) if entry["new"]]
    assert [source for _, source in new] == [4, 5, 6]  # top-heavy, L=8, K=3: between 4|5, 5|6, 6|7
    assert len(trained) == len(WEIGHT_KINDS)
    with torch.no_grad():
        for kind, predictor in zip(WEIGHT_KINDS, trained):
            weights = [layer.get_submodule(kind).weight for layer in base.model.layers]
            U, S, VT = torch.linalg.svd(torch.cat(weights, dim=1), full_matrices=False)
            width = weights[0].shape[1]
            V = [VT[:, l * width:(l + 1) * width] for l in range(len(weights))]
            for j, s in new:
                expected = (U * S) @ predictor(torch.cat([V[s], V[s + 1]], dim=1))
                torch.testing.assert_close(grown.model.layers[j].get_submodule(kind).weight, expected, atol=1e-5, rtol=1e-4)
    for j, s in new:
        origin = base.model.layers[0 if norms_from == "block-0" else s]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            assert torch.equal(getattr(grown.model.layers[j], norm).weight, getattr(origin, norm).weight), (j, norm)
