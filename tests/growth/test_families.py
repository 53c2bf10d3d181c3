"""Qwen2-, Qwen3- and Mistral-shaped bases grow with every method; identity holds where it applies."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from midus.checkpoint import save_model
from midus.model.compat import MASK_CACHE
from midus.growth.registry import METHODS
from model_helpers import FAMILIES, METHOD_FIELDS, grow, random_memory, tokens


@pytest.mark.parametrize("method", list(METHOD_FIELDS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_grows_every_family(family_bases, family, method):
    folder = family_bases[family]
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    grown = grow(folder, method)
    depth = 4 if method == "none" else 6
    assert grown.config.num_hidden_layers == depth == len(grown.model.layers) == len(grown.config.layer_map)
    assert [layer.self_attn.layer_idx for layer in grown.model.layers] == list(range(depth))
    if method in ("pkm", "midus"):
        assert grown.config.model_type == "midus" and grown.config.base_model_type == family
    else:
        assert type(grown) is type(base), "DUS methods write the base's own class"
    # per-layer settings follow each layer's source block
    sources = [entry["source"] for entry in grown.config.layer_map]
    base_types = getattr(base.config, "layer_types", None) or (
        ["sliding_attention" if base.config.sliding_window else "full_attention"] * 4)
    grown_types = getattr(grown.config, "layer_types", None)
    if grown_types is not None or family != "mistral":
        assert grown_types == [base_types[s] for s in sources]
    x = tokens(vocab=base.config.vocab_size)
    with torch.no_grad():
        logits, expected = grown(x).logits, base(x).logits
    assert torch.isfinite(logits).all()
    if METHODS[method].function_preserving:
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    else:  # SOLAR and LESA change the function at insertion
        assert (logits - expected).abs().max() > 1e-3


def test_qwen2_window_layers_follow_the_sources(family_bases):
    grown = grow(family_bases["qwen2"], "llama-pro", placement=[0, 3])
    # base: layers 0-1 full, 2-3 sliding (max_window_layers 2); grown sources 0 0 1 2 3 3
    assert grown.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3
    assert grown.config.max_window_layers == 3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_memory_block_attention_is_the_family_attention(family_bases, family):
    """The memory block's per-head outputs equal the source block's own attention before o_proj
    (q/k/v biases for qwen2, q/k norms for qwen3, sliding windows for mistral and qwen2)."""
    folder = family_bases[family]
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    grown = grow(folder, "midus", placement=[3, 3])  # memory blocks after the last (sliding) block
    memory_block, source = grown.model.layers[4], base.model.layers[3]
    assert grown.config.layer_map[4] == {"kind": "memory", "source": 3, "new": True}
    x = torch.randn(1, 9, 64)
    positions = torch.arange(9).unsqueeze(0)
    rotary = base.model.rotary_emb(x, positions)
    mask_kwargs = {"inputs_embeds": x, "attention_mask": None, MASK_CACHE: None, "position_ids": positions}

    sliding = grown.config.layer_types[4] == "sliding_attention"
    assert sliding == (family != "qwen3")
    make_mask = create_sliding_window_causal_mask if sliding else create_causal_mask
    with torch.no_grad():
        heads = memory_block.self_attn(x, rotary, make_mask(config=grown.config, **mask_kwargs))
        source.self_attn.o_proj = nn.Identity()
        reference, _ = source.self_attn(x, rotary, make_mask(config=base.config, **mask_kwargs))
    torch.testing.assert_close(heads.flatten(-2), reference, atol=1e-6, rtol=0)


def test_qwen2_midus_loads_in_a_fresh_process(family_bases, tmp_path):
    folder = family_bases["qwen2"]
    model = random_memory(grow(folder, "midus"))
    save_model(model, AutoTokenizer.from_pretrained(folder), tmp_path / "grown")
    assert json.loads((tmp_path / "grown" / "config.json").read_text())["base_model_type"] == "qwen2"
    x = tokens(seed=4)
    with torch.no_grad():
        torch.save({"x": x, "logits": model(x).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'grown')!r}, trust_remote_code=True).eval()
        data = torch.load({str(tmp_path / 'expected.pt')!r})
        with torch.no_grad():
            torch.testing.assert_close(model(data["x"]).logits, data["logits"], atol=1e-6, rtol=0)
        assert not [m for m in sys.modules if m == "midus" or m.startswith("midus.")]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
