"""LLaMA Pro: copies with o_proj and down_proj zeroed; identity at insertion, only those tensors differ."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_helpers import grow, tokens


@pytest.mark.parametrize("placement, new_blocks", [
    ("distributed", 4), ("top-heavy", 4), ("bottom-heavy", 2), ([0, 0, 7], 3)])
def test_identity_at_insertion(tiny_base_8, placement, new_blocks):
    base = AutoModelForCausalLM.from_pretrained(tiny_base_8).eval()
    grown = grow(tiny_base_8, "llama-pro", placement=placement, new_blocks=new_blocks)
    assert grown.config.num_hidden_layers == 8 + new_blocks
    assert [layer.self_attn.layer_idx for layer in grown.model.layers] == list(range(8 + new_blocks))
    x = tokens(vocab=base.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(grown(x).logits, base(x).logits, atol=1e-5, rtol=0)


def test_zeroed_tensors_are_the_only_changes(tiny_base_8):
    base = AutoModelForCausalLM.from_pretrained(tiny_base_8)
    grown = grow(tiny_base_8, "llama-pro", placement="distributed", new_blocks=4)
    layer_map = grown.config.layer_map
    assert [j for j, e in enumerate(layer_map) if e["new"]] == [2, 5, 8, 11]
    assert [e["source"] for e in layer_map if e["new"]] == [1, 3, 5, 7]
    base_state = base.state_dict()
    zeroed = []
    for name, tensor in grown.state_dict().items():
        if not name.startswith("model.layers."):
            assert torch.equal(tensor, base_state[name]), name
            continue
        index, rest = name.removeprefix("model.layers.").split(".", 1)
        source = base_state[f"model.layers.{layer_map[int(index)]['source']}.{rest}"]
        if torch.equal(tensor, source):
            continue
        assert not tensor.any(), f"{name} changed but is not zero"
        zeroed.append((int(index), rest))
    expected = [(j, part) for j in (2, 5, 8, 11) for part in ("self_attn.o_proj.weight", "mlp.down_proj.weight")]
    assert sorted(zeroed) == sorted(expected)
    pointers = [p.data_ptr() for p in grown.parameters()]
    assert len(pointers) == len(set(pointers)), "copies must own their storage"
