"""`midus inspect`: counts of the paper's 1B/8B recipes equal the SPEC formulas, from configs alone."""

import json
from pathlib import Path

import pytest
from transformers import LlamaConfig
from typer.testing import CliRunner

import midus.layer_report as layer_report
from midus.cli import app
from midus.layer_report import describe, inspect
from midus.recipe import METHODS

RECIPES = Path(__file__).parents[1] / "recipes"
# published shapes (written here, nothing downloaded)
PAPER = {
    "1b": dict(d=2048, d_ff=8192, L=16, heads=32, kv=8, vocab=128256, tied=True, K=8, r=64),
    "8b": dict(d=4096, d_ff=14336, L=32, heads=32, kv=8, vocab=128256, tied=False, K=16, r=128),
}


@pytest.fixture(scope="module")
def paper_configs(tmp_path_factory):
    folders = {}
    for name, s in PAPER.items():
        folder = tmp_path_factory.mktemp(f"llama-{name}")
        LlamaConfig(hidden_size=s["d"], intermediate_size=s["d_ff"], num_hidden_layers=s["L"],
                    num_attention_heads=s["heads"], num_key_value_heads=s["kv"], vocab_size=s["vocab"],
                    tie_word_embeddings=s["tied"], max_position_embeddings=131072, rms_norm_eps=1e-5).save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def formulas(d, d_ff, L, heads, kv, vocab, tied, K, r, n=64, k=32, pkm_heads=4, pkm_key_dim=128, context=2048):
    """Parameters and FLOPs of the SPEC, computed from the shapes alone."""
    d_h = d // heads
    qkv = d * heads * d_h + 2 * d * kv * d_h
    attention = qkv + heads * d_h * d
    block = attention + 3 * d * d_ff + 2 * d
    memory = {"attention": qkv, "projections": heads * r * d, "latent_bank": n * n * r,
              "keys": heads * 2 * n * (d_h // 2), "norms": d, "ffn": 0}
    pkm = {"attention": attention, "projections": d * pkm_heads * pkm_key_dim, "latent_bank": n * n * d,
           "keys": pkm_heads * 2 * n * (pkm_key_dim // 2), "norms": 2 * d, "ffn": 0}
    copy = {"attention": attention, "ffn": 3 * d * d_ff, "norms": 2 * d, "keys": 0, "latent_bank": 0, "projections": 0}
    base = vocab * d * (1 if tied else 2) + d + L * block
    attend = 4 * heads * d_h * context
    block_flops = 2 * (block - 2 * d) + attend
    memory_flops = 2 * (qkv + heads * r * d) + 2 * heads * n * d_h + 2 * heads * k * r + attend
    return dict(d_h=d_h, block=block, memory=memory, pkm=pkm, copy=copy, base=base, block_flops=block_flops,
                memory_flops=memory_flops, head_flops=2 * d * vocab)


@pytest.mark.parametrize("size", ["1b", "8b"])
@pytest.mark.parametrize("method", METHODS)
def test_paper_recipe_counts_equal_the_formulas(paper_configs, size, method):
    s = PAPER[size]
    f = formulas(**s)
    report = inspect(str(RECIPES / f"paper-{size}" / f"{method}.yaml"), base=paper_configs[size])
    p = report["parameters"]
    K = 0 if method == "none" else s["K"]
    parts = {"none": f["copy"], "solar": f["copy"], "llama-pro": f["copy"], "lesa": f["copy"],
             "pkm": f["pkm"], "midus": f["memory"]}[method]
    assert report["num_layers"] == s["L"] + K and report["new_layers"] == K
    assert p["base"] == f["base"]
    assert p["added"] == K * sum(parts.values())
    assert p["total"] == f["base"] + p["added"]
    assert p["added_share"] == pytest.approx(p["added"] / f["base"])
    assert p["new_blocks"] == {"total": p["added"], **{part: K * count for part, count in parts.items()}}
    assert p["embeddings"] == s["vocab"] * s["d"] and p["head"] == (0 if s["tied"] else s["vocab"] * s["d"])
    assert p["backbone_blocks"] == s["L"] * f["block"]
    assert p["embeddings"] + p["head"] + p["final_norm"] + p["backbone_blocks"] + p["added"] == p["total"]
    fl = report["flops_per_token"]
    assert fl["base"] == s["L"] * f["block_flops"] + f["head_flops"]
    if method == "midus":
        assert fl["total"] == fl["base"] + K * f["memory_flops"]
    elif method != "pkm":
        assert fl["total"] == fl["base"] + K * f["block_flops"]


def test_spec_arithmetic_for_the_1b(paper_configs):
    """SPEC: a duplicated block ~60.8M, a memory block (n=64, r=64) ~10.9M, ~1/5.6 of it in FLOPs too."""
    midus = inspect(str(RECIPES / "paper-1b" / "midus.yaml"), base=paper_configs["1b"], context=0)
    llama_pro = inspect(str(RECIPES / "paper-1b" / "llama-pro.yaml"), base=paper_configs["1b"], context=0)
    memory_block = next(layer for layer in midus["layers"] if layer["new"])
    full_block = next(layer for layer in llama_pro["layers"] if layer["new"])
    assert round(full_block["parameters"] / 1e6, 1) == 60.8 and round(llama_pro["parameters"]["added"] / 1e6) == 487
    assert round(memory_block["parameters"] / 1e6, 1) == 10.9
    parts = midus["parameters"]["new_blocks"]
    assert [round(parts[k] / 8 / 1e6, 2) for k in ("attention", "projections", "latent_bank", "keys")] == [6.29, 4.19, 0.26, 0.13]
    assert 5.5 < full_block["flops_per_token"] / memory_block["flops_per_token"] < 5.8


def test_layer_map_and_trainable(paper_configs):
    report = inspect(str(RECIPES / "paper-1b" / "llama-pro.yaml"), base=paper_configs["1b"], trainable="new-blocks")
    new = [layer["index"] for layer in report["layers"] if layer["new"]]
    assert new == [2, 5, 8, 11, 14, 17, 20, 23]  # after blocks 1, 3, ..., 15
    assert [layer["source"] for layer in report["layers"] if layer["new"]] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert all(layer["trainable"] == layer["new"] for layer in report["layers"])
    assert report["parameters"]["trainable"] == report["parameters"]["added"]
    solar = inspect(str(RECIPES / "paper-1b" / "solar.yaml"), base=paper_configs["1b"])
    assert [layer["source"] for layer in solar["layers"]] == list(range(12)) + list(range(4, 16))
    assert all(layer["kind"] == "decoder" for layer in solar["layers"])


SCHEMA_KEYS = {
    "": {"schema", "name", "source", "recipe", "model_type", "base_model_type", "num_layers", "new_layers",
         "trainable_mode", "layers", "parameters", "flops_per_token"},
    "layers": {"index", "kind", "source", "new", "trainable", "parameters", "flops_per_token"},
    "parameters": {"total", "base", "added", "added_share", "trainable", "embeddings", "head", "final_norm",
                   "backbone_blocks", "new_blocks"},
    "new_blocks": {"total", "attention", "ffn", "keys", "latent_bank", "projections", "norms"},
    "flops_per_token": {"context", "total", "base", "ratio", "weights", "attention"},
}


def test_json_is_stable_and_documented(paper_configs):
    runner = CliRunner()
    args = ["inspect", str(RECIPES / "paper-8b" / "midus.yaml"), "--base", paper_configs["8b"], "--json"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["schema"] == "midus.inspect/1"
    assert set(report) == SCHEMA_KEYS[""]
    assert all(set(layer) == SCHEMA_KEYS["layers"] for layer in report["layers"])
    assert set(report["parameters"]) == SCHEMA_KEYS["parameters"]
    assert set(report["parameters"]["new_blocks"]) == SCHEMA_KEYS["new_blocks"]
    assert set(report["flops_per_token"]) == SCHEMA_KEYS["flops_per_token"]
    for key in set().union(*SCHEMA_KEYS.values()):
        assert f'"{key}"' in layer_report.__doc__, f"{key} is not documented"
    text = runner.invoke(app, args[:-1])
    assert text.exit_code == 0 and "latent bank" in text.stdout and "FLOPs per token" in text.stdout


def test_model_folders_and_grown_checkpoints(tiny_base, tmp_path):
    plain = inspect(str(tiny_base))
    assert plain["source"] == "model" and plain["new_layers"] == 0 and plain["parameters"]["added"] == 0
    assert plain["parameters"]["total"] == plain["parameters"]["base"]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: {tiny_base}\nmethod: midus\nnew_blocks: 2\nmemory: {{n_keys: 8, topk: 4, latent_dim: 16}}\n")
    assert CliRunner().invoke(app, ["upscale", str(recipe), str(tmp_path / "grown")]).exit_code == 0
    grown, planned = inspect(str(tmp_path / "grown")), inspect(str(recipe))
    assert grown["layers"] == planned["layers"] and grown["parameters"] == planned["parameters"]
    assert grown["parameters"]["base"] == plain["parameters"]["total"]


@pytest.mark.parametrize("method", ["llama-pro", "midus"])
def test_8b_recipe_inspects_without_allocating_weights(paper_configs, monkeypatch, method):
    """Billions of parameters are counted on the meta device: no tensor of the model has storage."""
    built = []
    monkeypatch.setattr(layer_report, "describe", lambda model, **kw: built.append(model) or describe(model, **kw))
    report = inspect(str(RECIPES / "paper-8b" / f"{method}.yaml"), base=paper_configs["8b"])
    assert report["parameters"]["total"] > 8.5e9  # Llama-3.1-8B (8.0B) grown by 16 blocks
    (model,) = built
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.is_meta for t in tensors)


@pytest.mark.parametrize("args, fragment", [
    (["--trainable", "some"], "--trainable 'some'; valid: all, new-blocks, memory"),
    (["--base", "x"], "--base applies to a recipe"),
])
def test_bad_options(tiny_base, args, fragment):
    result = CliRunner().invoke(app, ["inspect", str(tiny_base), *args])
    assert result.exit_code == 2 and fragment in result.stderr
