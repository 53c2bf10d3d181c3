"""SOLAR: [0, L-m) + [m, L); every tensor of the grown model is the source tensor the layout names."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_helpers import grow, recipe
from midus.recipe import RecipeError
from midus.growth.solar import solar_layout, solar_overlap


@pytest.mark.parametrize("L, m, expected", [
    (16, 4, list(range(12)) + list(range(4, 16))),  # the paper's 1B: 24 blocks
    (32, 8, list(range(24)) + list(range(8, 32))),  # the paper's 8B: 48 blocks
    (4, 1, [0, 1, 2, 1, 2, 3]),
])
def test_layout(L, m, expected):
    layout = solar_layout(L, m)
    assert [source for source, _ in layout] == expected
    assert sum(new for _, new in layout) == L - 2 * m
    # the new blocks are the second copies of the blocks both halves hold
    assert [source for source, new in layout if new] == list(range(m, L - m))


def test_every_tensor_is_its_source(tiny_base_8):
    base = AutoModelForCausalLM.from_pretrained(tiny_base_8)
    grown = grow(tiny_base_8, "solar", solar_overlap=2)
    sources = [entry["source"] for entry in grown.config.layer_map]
    assert sources == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]
    assert grown.config.num_hidden_layers == 12 and type(grown) is type(base)
    base_state, grown_state = base.state_dict(), grown.state_dict()
    assert len(grown_state) == len(base_state) + 4 * len([n for n in base_state if n.startswith("model.layers.0.")])
    for name, tensor in grown_state.items():
        if name.startswith("model.layers."):
            index, rest = name.removeprefix("model.layers.").split(".", 1)
            source_name = f"model.layers.{sources[int(index)]}.{rest}"
        else:
            source_name = name
        assert torch.equal(tensor, base_state[source_name]), name
    assert [layer.self_attn.layer_idx for layer in grown.model.layers] == list(range(12))


def test_m_and_new_blocks_agree():
    def m_of(L, **fields):
        return solar_overlap(recipe("unused", "solar", **{"solar_overlap": None, **fields}), L)

    assert m_of(16) == 4 and m_of(32) == 8  # default L/4
    assert m_of(16, new_blocks=8) == 4 and m_of(16, solar_overlap=4, new_blocks=8) == 4
    with pytest.raises(RecipeError, match="m < L/2"):
        m_of(16, solar_overlap=8)
    with pytest.raises(RecipeError, match="does not match"):
        m_of(16, solar_overlap=4, new_blocks=6)
    with pytest.raises(RecipeError, match="14, 12, 10, 8, 6, 4, 2"):
        m_of(16, new_blocks=7)
