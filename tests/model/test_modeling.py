import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from midus import MidusConfig, MidusForCausalLM
from midus.checkpoint import save_model
from midus.parameters import memory_group_parameter_names
from model_helpers import grow, random_memory, tokens


@pytest.mark.parametrize("placement", ["distributed", "top-heavy", "bottom-heavy", [0, 0, 5]])
def test_identity_at_insertion(tiny_base_8, placement):
    base = AutoModelForCausalLM.from_pretrained(tiny_base_8).eval()
    new_blocks = len(placement) if isinstance(placement, list) else 4
    grown = grow(tiny_base_8, placement=placement, new_blocks=new_blocks).eval()
    assert grown.config.num_hidden_layers == 8 + new_blocks
    assert [layer.self_attn.layer_idx for layer in grown.model.layers] == list(range(8 + new_blocks))
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(grown(x).logits, base(x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("values", ["hive", "per-head", "shared"])
@pytest.mark.parametrize("share_bank", [False, True])
def test_identity_for_every_value_variant(tiny_base, values, share_bank):
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    grown = grow(tiny_base, memory={"values": values, "share_bank": share_bank}).eval()
    x = tokens(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(grown(x).logits, base(x).logits, atol=1e-5, rtol=0)


def test_memory_block_copies_own_storage(tiny_base):
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    grown = grow(tiny_base, placement=[1, 2], new_blocks=2)
    memory_block, source = grown.model.layers[2], base.model.layers[1]
    assert grown.config.layer_map[2] == {"kind": "memory", "source": 1, "new": True}
    assert torch.equal(memory_block.self_attn.q_proj.weight, source.self_attn.q_proj.weight)
    assert torch.equal(memory_block.input_layernorm.weight, source.input_layernorm.weight)
    pointers = [p.data_ptr() for p in grown.parameters()]
    assert len(pointers) == len(set(pointers)), "grown model shares storage between tensors"
    assert memory_block.self_attn.q_proj.weight.data_ptr() != grown.model.layers[1].self_attn.q_proj.weight.data_ptr()


def test_memory_changes_output_once_projection_is_nonzero(tiny_base):
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    grown = random_memory(grow(tiny_base)).eval()
    x = tokens(seed=3)
    with torch.no_grad():
        assert (grown(x).logits - base(x).logits).abs().max() > 1e-3


def test_save_load_in_fresh_process_without_midus(tiny_base, tmp_path):
    model = random_memory(grow(tiny_base)).eval()
    from transformers import AutoTokenizer

    save_model(model, AutoTokenizer.from_pretrained(tiny_base), tmp_path / "grown")
    config = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert config["model_type"] == "midus"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    x = tokens(seed=4)
    with torch.no_grad():
        expected = model(x).logits
    torch.save({"x": x, "logits": expected}, tmp_path / "expected.pt")

    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModel, AutoModelForCausalLM
        folder = {str(tmp_path / 'grown')!r}
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        AutoModel.from_pretrained(folder, trust_remote_code=True)
        data = torch.load({str(tmp_path / 'expected.pt')!r})
        with torch.no_grad():
            torch.testing.assert_close(model(data["x"]).logits, data["logits"], atol=1e-6, rtol=0)
            out = model.generate(data["x"][:1, :4], max_new_tokens=5, do_sample=False)
        assert out.shape == (1, 9), out.shape
        assert not [m for m in sys.modules if m == "midus" or m.startswith("midus.")], "midus was imported"
        print("ok", type(model).__module__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok transformers_modules" in result.stdout


def test_two_optimizer_steps_move_every_memory_parameter(tiny_base):
    model = grow(tiny_base, placement=[1, 3], new_blocks=2).train()
    new_blocks = [i for i, entry in enumerate(model.config.layer_map) if entry["new"]]
    tracked = {name: p.detach().clone() for name, p in model.named_parameters()
               if any(name.startswith(f"model.layers.{i}.") for i in new_blocks)}
    assert any("q_proj" in n for n in tracked) and any("retrieval.keys" in n for n in tracked)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    x = tokens(n=16, batch=4, seed=5)

    def step():
        optimizer.zero_grad()
        model(x, labels=x).loss.backward()
        optimizer.step()

    step()
    moved = {n for n, p in model.named_parameters() if n in tracked and not torch.equal(p, tracked[n])}
    assert moved == {n for n in tracked if "values.proj" in n}, "step 1 must move only the zero-initialised P"
    step()
    unmoved = [n for n, p in model.named_parameters() if n in tracked and torch.equal(p, tracked[n])]
    assert unmoved == [], f"not moved after two steps: {unmoved}"


def test_bf16_forward_backward(tiny_base):
    model = random_memory(grow(tiny_base)).to(torch.bfloat16).train()
    x = tokens(seed=6)
    loss = model(x, labels=x).loss
    assert loss.dtype == torch.float32 or loss.dtype == torch.bfloat16
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n in memory_group_parameter_names(model)]
    assert grads and all(g is not None and torch.isfinite(g.float()).all() for g in grads)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("query_norm", ["none", "rms", "layer"])
def test_query_norms_run_and_train(tiny_base, query_norm):
    model = random_memory(grow(tiny_base, memory={"query_norm": query_norm}))
    x = tokens(seed=7)
    model(x, labels=x).loss.backward()
    keys = model.model.layers[2].memory.retrieval.keys
    assert keys.grad is not None and keys.grad.abs().sum() > 0


def real_config(name):
    """Published shapes of Llama-3.2-1B and Llama-3.1-8B (written here: no download)."""
    shapes = {
        "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
        "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    }[name]
    return LlamaConfig(max_position_embeddings=131072, rms_norm_eps=1e-5, **shapes)


def block_formula(d, d_ff, heads, kv_heads):
    d_h = d // heads
    attention = d * heads * d_h + 2 * d * kv_heads * d_h + heads * d_h * d
    return attention + 3 * d * d_ff + 2 * d


def memory_block_formula(d, heads, kv_heads, n, r):
    d_h = d // heads
    qkv = d * heads * d_h + 2 * d * kv_heads * d_h
    return qkv + d + heads * r * d + n * n * r + heads * 2 * n * (d_h // 2)


@pytest.mark.parametrize("name, new_blocks", [("1b", 8), ("8b", 16)])
def test_parameter_counts_on_meta_match_formulas(name, new_blocks):
    base = real_config(name)
    d, L = base.hidden_size, base.num_hidden_layers
    layer_map = [{"kind": "decoder", "source": i, "new": False} for i in range(L)]
    for j, src in enumerate(range(L - new_blocks - 1, L - 1)):
        layer_map.insert(src + 1 + j, {"kind": "memory", "source": src, "new": True})
    fields = {k: v for k, v in base.to_dict().items() if k not in ("model_type", "transformers_version")}
    config = MidusConfig(**{**fields, "num_hidden_layers": L + new_blocks}, layer_map=layer_map)
    with torch.device("meta"):
        model = MidusForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())

    block = block_formula(d, base.intermediate_size, 32, 8)
    memory_block = memory_block_formula(d, 32, 8, n=64, r=64)
    embeddings = base.vocab_size * d * (1 if base.tie_word_embeddings else 2)
    assert total == embeddings + d + L * block + new_blocks * memory_block
    if name == "1b":  # SPEC arithmetic
        assert round(block / 1e6, 1) == 60.8
        assert round(memory_block / 1e6, 1) == 10.9
        assert 5.5 < block / memory_block < 5.7


def test_shared_bank_is_owned_once_and_round_trips(tiny_base, tmp_path):
    model = random_memory(grow(tiny_base, memory={"share_bank": True})).eval()
    banks = [n for n, _ in model.named_parameters() if "bank" in n]
    assert banks == ["model.shared_bank"]
    assert all(layer.memory.values.bank is None for layer in model.model.layers if hasattr(layer, "memory"))
    save_model(model, None, tmp_path / "shared")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "shared").eval()
    x = tokens(seed=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_base):
    model = random_memory(grow(tiny_base))
    x = tokens(seed=9)
    with torch.no_grad():  # an evaluation before training must not change how training runs
        model.eval()(x)
    model.train()

    def gradients():
        model.zero_grad(set_to_none=True)
        model(x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and any("retrieval.keys" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("values", ["hive", "per-head", "shared"])
@pytest.mark.parametrize("share_bank", [False, True])
def test_zero_init_picks_the_tensor_that_starts_at_zero(tiny_base, values, share_bank):
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    x = tokens(seed=4)
    with torch.no_grad():
        expected = base(x).logits
    for zero_init in ("proj", "bank", "none"):
        grown = grow(tiny_base, memory={"values": values, "share_bank": share_bank, "zero_init": zero_init}).eval()
        block = next(layer for layer in grown.model.layers if hasattr(layer, "memory"))
        bank = grown.model.shared_bank if share_bank else block.memory.values.bank
        proj = getattr(block.memory.values, "proj", None)
        if values == "hive":
            assert (proj.weight.abs().max() == 0) == (zero_init == "proj")
            assert (bank.abs().max() == 0) == (zero_init == "bank")
        else:  # no projection: the table starts at zero unless zero_init is none
            assert (bank.abs().max() == 0) == (zero_init != "none")
        with torch.no_grad():
            difference = (grown(x).logits - expected).abs().max()
        if zero_init == "none":
            assert difference > 1e-4  # a perturbed base, not the identity
        else:
            assert difference <= 1e-5
