"""LESA: SVD per weight kind, an MLP that predicts a layer's V from its neighbours', new layers from it."""

import torch
from transformers import AutoModelForCausalLM

from model_helpers import grow, tokens
from midus.recipe import LesaSettings
from midus.upscale.lesa import WEIGHT_KINDS, factorize, predict_layer, train_predictor


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
        # norms are copied from the source block
        assert torch.equal(layers[j].input_layernorm.weight, before.input_layernorm.weight)
        assert torch.equal(layers[j].post_attention_layernorm.weight, before.post_attention_layernorm.weight)
    # existing layers are untouched copies
    for j, entry in enumerate(grown.config.layer_map):
        if not entry["new"]:
            for name, param in layers[j].named_parameters():
                assert torch.equal(param, base.model.layers[entry["source"]].get_parameter(name)), (j, name)


def test_seeded(tiny_base):
    first, second = grow(tiny_base, "lesa", seed=3), grow(tiny_base, "lesa", seed=3)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
