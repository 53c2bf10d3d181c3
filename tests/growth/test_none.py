"""CPT-Base: the base written back as a checkpoint of its own class, with a layer map of its blocks."""

import torch
from transformers import AutoModelForCausalLM

from model_helpers import grow
from midus.parameters import new_layer_indices


def test_none_is_the_base(tiny_base):
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    grown = grow(tiny_base, "none")
    assert type(grown) is type(base)
    assert grown.config.layer_map == [{"kind": "decoder", "source": i, "new": False} for i in range(4)]
    assert new_layer_indices(grown.config) == []
    base_state = base.state_dict()
    assert grown.state_dict().keys() == base_state.keys()
    for name, tensor in grown.state_dict().items():
        assert torch.equal(tensor, base_state[name]) and tensor.data_ptr() != base_state[name].data_ptr(), name
