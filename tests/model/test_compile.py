"""MIDUS models under transformers' static KV cache and torch.compile(fullgraph=True): no graph break,
and the same tokens, losses and gradients as eager with the dynamic cache. The `eager` and `aot_eager`
backends trace the whole graph (a break is an error with fullgraph) without inductor's minutes of
code generation; benchmarks/memory_cost.py times the inductor build."""

import pytest
import torch

from model_helpers import grow, random_memory, tokens


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # each test compiles new models: no recompile budget carried over
    yield
    torch._dynamo.reset()


def grown(base, method="midus", **fields):
    model = grow(base, method, **fields)
    random_memory(model)
    return model


def greedy(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=6, do_sample=False, **kwargs)


@pytest.mark.parametrize("method, memory", [("midus", None), ("midus", {"share_bank": True}),
                                            ("midus", {"values": "shared"}), ("pkm", None)])
def test_static_cache_generates_what_the_dynamic_cache_does(tiny_base, method, memory):
    model = grown(tiny_base, method, memory=memory)
    ids = tokens(8, batch=2)
    torch.testing.assert_close(greedy(model, ids, cache_implementation="static"), greedy(model, ids), rtol=0, atol=0)


def test_static_cache_with_sliding_window_layers(family_bases):
    """qwen2's upper layers slide: generate passes one ready-made mask per layer type."""
    model = grown(family_bases["qwen2"])
    ids = tokens(8, batch=2)
    torch.testing.assert_close(greedy(model, ids, cache_implementation="static"), greedy(model, ids), rtol=0, atol=0)


def test_compiled_forward_decodes_with_the_static_cache_without_graph_breaks(tiny_base):
    model = grown(tiny_base)
    ids = tokens(8, batch=1)
    expected = greedy(model, ids)
    model.forward = torch.compile(model.forward, fullgraph=True, backend="eager")
    torch.testing.assert_close(greedy(model, ids, cache_implementation="static"), expected, rtol=0, atol=0)


@pytest.mark.parametrize("memory", [None, {"share_bank": True}])
def test_compiled_training_step_has_the_eager_loss_and_gradients(tiny_base, memory):
    model = grown(tiny_base, memory=memory).train()
    ids = tokens(16, batch=2)

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(model.forward)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model.forward, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled_loss, loss)
    assert compiled_grads.keys() == grads.keys()
    assert any("memory.values" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=name)
