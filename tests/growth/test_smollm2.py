"""Every method of the demo's experiment on the real pre-trained SmolLM2-135M: its depth, identity at
insertion for the function-preserving methods, and one CPT step by the paper's optimiser rule."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from midus.compare import load_experiment
from midus.data.wikipedia import load_wikipedia
from midus.parameters import memory_group_parameter_names
from midus.train.optim import build_optimizer, select_trainable
from midus.growth import upscale
from midus.growth.registry import METHODS

EXPERIMENT = load_experiment("smollm2-wiki")


@pytest.fixture(scope="module")
def batch(smollm2_base, tmp_path_factory):
    """The first 64 tokens of 2 held-out Wikipedia articles."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_base)
    texts = load_wikipedia(cache_dir=tmp_path_factory.mktemp("wiki")).texts("heldout")[:2]
    return tokenizer(texts, return_tensors="pt", truncation=True, max_length=64, padding="max_length")["input_ids"]


@pytest.fixture(scope="module")
def base_logits(smollm2_base, batch):
    model = AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(batch).logits


@pytest.mark.parametrize("method", EXPERIMENT.method_names)
def test_growth_and_one_cpt_step_on_the_real_base(method, smollm2_base, batch, base_logits):
    recipe = EXPERIMENT.recipe(method, str(smollm2_base), seed=0).model_copy(update={"dtype": "float32"})
    if method == "lesa":  # LESA's predictor trained briefly: this tests the growth, not its quality
        recipe = recipe.model_copy(update={"lesa": recipe.lesa.model_copy(update={"epochs": 1})})
    model = upscale(str(smollm2_base), recipe).eval()
    assert model.config.num_hidden_layers == (30 if method == "none" else 38)  # equal depth, SOLAR included
    with torch.no_grad():
        diff = (model(batch).logits - base_logits).abs().max().item()
    if METHODS[method].function_preserving:
        assert diff == 0.0
    else:  # SOLAR and LESA change the function at insertion
        assert diff > 1e-3

    config = EXPERIMENT.train_config(method, "model", "out", seed=0, data={"files": ["cpt.jsonl"]})
    select_trainable(model, config.trainable)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = build_optimizer(model, config)
    memory = {g["name"]: g for g in optimizer.param_groups}.get("memory")
    if method in ("pkm", "midus"):  # the paper's rule: keys and values at their own constant lr, no weight decay
        assert memory is not None and memory["weight_decay"] == 0.0 and not memory["scheduled"]
        assert sum(p.numel() for p in memory["params"]) == sum(
            p.numel() for n, p in model.named_parameters() if n in memory_group_parameter_names(model)) > 0
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch, labels=batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())
    moved = [n for n, p in trainable.items() if not torch.equal(after[n], p)]
    assert moved
    if config.trainable == "new-blocks":  # LLaMA Pro: the base's 30 blocks and the embeddings stay frozen
        assert "model.embed_tokens.weight" in frozen and len(frozen) > len(trainable)
