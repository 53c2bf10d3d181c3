"""The pkm baseline: copies of the source block whose FFN is a product-key memory (own query projection)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_helpers import grow, tokens
from midus.model import MidusPKMBlock
from midus.model.hml import ProductKeyMemory


@pytest.mark.parametrize("placement, new_blocks", [("distributed", 4), ("top-heavy", 2), ("bottom-heavy", 3), ([2, 7], 2)])
def test_identity_at_insertion(tiny_base_8, placement, new_blocks):
    base = AutoModelForCausalLM.from_pretrained(tiny_base_8).eval()
    grown = grow(tiny_base_8, "pkm", placement=placement, new_blocks=new_blocks)
    assert type(grown).__name__ == "MidusForCausalLM"
    kinds = [e["kind"] for e in grown.config.layer_map]
    assert kinds.count("pkm") == new_blocks and all(e["new"] == (e["kind"] == "pkm") for e in grown.config.layer_map)
    x = tokens(vocab=base.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(grown(x).logits, base(x).logits, atol=1e-5, rtol=0)


def test_block_copies_attention_and_starts_silent(tiny_base):
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    grown = grow(tiny_base, "pkm", placement=[1, 2], new_blocks=2)
    block, source = grown.model.layers[2], base.model.layers[1]
    assert isinstance(block, MidusPKMBlock) and isinstance(block.mlp, ProductKeyMemory)
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "input_layernorm.weight", "post_attention_layernorm.weight"):
        assert torch.equal(block.get_parameter(name), source.get_parameter(name)), name
    assert not block.self_attn.o_proj.weight.any(), "o_proj starts at zero"
    assert not block.mlp.values.bank.any(), "the value table starts at zero"
    assert block.mlp.retrieval.keys.abs().sum() > 0 and block.mlp.query_proj.weight.abs().sum() > 0


def test_memory_changes_output_once_trained(tiny_base):
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    grown = grow(tiny_base, "pkm").train()
    x = tokens(n=16, batch=4, seed=5, vocab=base.config.vocab_size)
    optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        grown(x, labels=x).loss.backward()
        optimizer.step()
    block = grown.model.layers[2]
    assert block.mlp.values.bank.any() and block.self_attn.o_proj.weight.any()
    with torch.no_grad():
        assert (grown.eval()(x).logits - base(x).logits).abs().max() > 1e-4
